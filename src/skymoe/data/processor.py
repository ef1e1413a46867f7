"""SkyMoEProcessor: images -> pixel_values, the chat template, padding and label masking.

Sequence layout (docs/ARCHITECTURE.md)::

    <s> <route>xR <image>xN USER: {instruction}\\nASSISTANT: {answer}</s> [USER: ...\\nASSISTANT: ...</s>]

Each piece is tokenised on its own and the ids are concatenated, so label and
instruction masks fall exactly on token boundaries. Only assistant answers
(and their ``</s>``) are supervised; everything else is -100 in ``labels``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from skymoe.data.boxes import canonical_to_loc, loc_to_canonical
from skymoe.data.schema import Sample, Turn
from skymoe.data.tokenizer import has_location_tokens, location_token_start, special_token_ids
from skymoe.errors import DataError

if TYPE_CHECKING:  # torch is imported lazily: building a processor must not load it
    import torch

PROCESSOR_CONFIG = "processor_config.json"
IGNORE_INDEX = -100
USER_PREFIX = "USER: "
ASSISTANT_PREFIX = "\nASSISTANT:"
_MEMO_SIZE = 200_000  # distinct text pieces remembered (see SkyMoEProcessor._ids)


@dataclass
class ImageSettings:
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]


class SkyMoEProcessor:
    def __init__(
        self,
        tokenizer,
        image_size: int = 224,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        num_image_tokens: int = 49,
        num_route_tokens: int = 0,
        max_length: int | None = None,
        blind: bool = False,
        zoom: bool = False,
        zoom_size: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.image = ImageSettings(int(image_size), tuple(image_mean), tuple(image_std))
        self.num_image_tokens = int(num_image_tokens)
        self.num_route_tokens = int(num_route_tokens)
        self.max_length = max_length
        # The blind control: every image becomes one constant image (the normalisation mean, so 0 after
        # normalising). A model trained and evaluated with it shows what the text alone gives.
        self.blind = bool(blind)
        self.ids = special_token_ids(tokenizer)
        # A tokenizer with location tokens: boxes are written with them (in) and read back as canonical text (out).
        self.location_tokens = has_location_tokens(tokenizer)
        # A model whose evidence head reads the instruction's box re-encoded (skymoe.data.zoom): batches carry its zoom.
        self.zoom, self.zoom_size = bool(zoom), zoom_size
        self.location_start = location_token_start(tokenizer) if self.zoom else None
        if self.zoom and self.location_start is None:
            raise ValueError("zoom reads the instruction's box from its location tokens, but the tokenizer has none")
        self._memo: dict[str, list[int]] = {}

    @classmethod
    def from_model_config(cls, config, tokenizer, max_length: int | None = None, blind: bool = False) -> "SkyMoEProcessor":
        """The processor that matches a ``SkyMoEConfig`` (image size/normalisation, token counts)."""
        return cls(
            tokenizer,
            image_size=config.image_size,
            image_mean=config.image_mean,
            image_std=config.image_std,
            num_image_tokens=config.num_image_tokens,
            num_route_tokens=config.num_route_tokens,
            max_length=max_length,
            blind=blind,
            zoom=bool(config.box_head and config.box_head.get("zoom")),
            zoom_size=config.box_head.get("zoom_size") if config.box_head else None,
        )

    # ---- images ---------------------------------------------------------------------------------
    def preprocess_images(self, images, size: int | None = None) -> torch.Tensor:
        """PIL RGB images -> float tensor [B, 3, S, S], resized (bicubic) to ``size`` (default: the image size) and
        normalised."""
        import torch
        from PIL import Image

        size = size or self.image.image_size
        mean = np.asarray(self.image.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.image.image_std, dtype=np.float32)[:, None, None]
        arrays = []
        for image in images:
            if not isinstance(image, Image.Image):
                raise TypeError(f"expected a PIL image, got {type(image).__name__}; load it with skymoe.data.imagery.load_image")
            if self.blind:
                arrays.append(np.zeros((3, size, size), dtype=np.float32))
                continue
            image = image.convert("RGB").resize((size, size), Image.BICUBIC)
            array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
            arrays.append((array - mean) / std)
        return torch.from_numpy(np.stack(arrays))

    # ---- text -----------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        """Token ids of a text piece. Templated prompts and short answers repeat: each distinct piece is
        tokenised once (the tokenizer call costs more than a small model's step spends on the sample)."""
        ids = self._memo.get(text)
        if ids is None:
            piece = canonical_to_loc(text) if self.location_tokens else text
            backend = getattr(self.tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: no Python-side overhead
            if backend is not None:
                ids = backend.encode(piece, add_special_tokens=False).ids
            else:
                ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            if len(self._memo) >= _MEMO_SIZE:
                self._memo.clear()
            self._memo[text] = ids
        return list(ids)

    def _prefix(self) -> list[int]:
        return [self.ids["bos"]] + [self.ids["route"]] * self.num_route_tokens + [self.ids["image"]] * self.num_image_tokens

    def _user_turn(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of one user turn and its instruction mask (1 on the instruction text)."""
        head = self._ids(USER_PREFIX)
        body = self._ids(text.replace("<image>", "").strip())
        tail = self._ids(ASSISTANT_PREFIX)
        return head + body + tail, [0] * len(head) + [1] * len(body) + [0] * len(tail)

    def _answered_turns(self, turns) -> tuple[list[int], list[int], list[int]]:
        """Ids, labels and instruction mask of complete user/assistant pairs (answers + </s> supervised)."""
        input_ids, labels, instruction = [], [], []
        for i in range(0, len(turns) - 1, 2):
            user_ids, user_mask = self._user_turn(turns[i].text)
            answer_ids = self._ids(" " + turns[i + 1].text.strip()) + [self.ids["eos"]]
            input_ids += user_ids + answer_ids
            labels += [IGNORE_INDEX] * len(user_ids) + answer_ids
            instruction += user_mask + [0] * len(answer_ids)
        return input_ids, labels, instruction

    def encode(self, sample: Sample) -> dict[str, list[int]]:
        """Unpadded training features of one sample (lists of ints)."""
        turns = sample.conversation
        if not turns or turns[-1].role != "assistant":
            raise DataError("conversation must end with an assistant answer", record=sample.id, field="conversation")
        prefix = self._prefix()
        input_ids, labels, instruction = self._answered_turns(turns)
        input_ids = prefix + input_ids
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise DataError(
                f"{len(input_ids)} tokens exceed max_length={self.max_length}", record=sample.id, field="conversation"
            )
        return {
            "input_ids": input_ids,
            "labels": [IGNORE_INDEX] * len(prefix) + labels,
            "instruction_mask": [0] * len(prefix) + instruction,
            "task_label": sample.task.index,
            "granularity_label": sample.granularity.index,
        }

    def _encode_prompt(self, prompt) -> tuple[list[int], list[int]]:
        """A generation prompt: a question, or a conversation (list of Turns) ending with a user turn."""
        turns = [Turn("user", prompt)] if isinstance(prompt, str) else list(prompt)
        if not turns or turns[-1].role != "user":
            raise ValueError("a generation prompt must end with a user turn")
        prefix = self._prefix()
        history_ids, _, history_mask = self._answered_turns(turns[:-1])
        user_ids, user_mask = self._user_turn(turns[-1].text)
        return prefix + history_ids + user_ids, [0] * len(prefix) + history_mask + user_mask

    # ---- batches --------------------------------------------------------------------------------
    def pad(self, features: list[dict], pixel_values=None, *, padding_side: str = "right", image_key: str = "pixel_values") -> dict:
        """Pad encoded features into a batch dict of tensors; the image tensor goes under ``image_key``
        (``vision_features`` for cached tower outputs)."""
        import torch

        length = max(len(f["input_ids"]) for f in features)

        def padded(key: str, value: int) -> torch.Tensor:
            rows = []
            for f in features:
                fill = [value] * (length - len(f[key]))
                rows.append(f[key] + fill if padding_side == "right" else fill + f[key])
            return torch.tensor(rows, dtype=torch.long)

        for f in features:
            f["attention_mask"] = [1] * len(f["input_ids"])
        batch = {
            "input_ids": padded("input_ids", self.ids["pad"]),
            "attention_mask": padded("attention_mask", 0),
            "instruction_mask": padded("instruction_mask", 0),
        }
        if pixel_values is not None:
            batch[image_key] = pixel_values
        if "labels" in features[0]:
            batch["labels"] = padded("labels", IGNORE_INDEX)
        for key in ("task_label", "granularity_label"):
            if key in features[0]:
                batch[key + "s"] = torch.tensor([f[key] for f in features], dtype=torch.long)
        return batch

    def collate(self, samples: list[Sample], images) -> dict:
        """Training batch (right padding) for ``samples`` and their PIL ``images``."""
        if len(samples) != len(images):
            raise ValueError(f"{len(samples)} samples but {len(images)} images")
        return self.batch([self.encode(s) for s in samples], *self.pixel_views(images))

    def prepare_generation(self, images, prompts, tasks=None, *, source=None, requests=None) -> dict:
        """Generation inputs (left padding, no labels). ``tasks`` (Task or str) adds ``task_labels``.

        ``source`` and ``requests`` (a feature source, e.g. the tower's feature cache, and one view request per
        prompt: :mod:`skymoe.data.feature_cache`) replace ``images`` (PIL).
        """
        from skymoe.data.schema import Task

        if source is None:
            requests, source = self.pixel_views(images)
        if len(requests) != len(prompts):
            raise ValueError(f"{len(requests)} images but {len(prompts)} prompts")
        features = []
        for i, prompt in enumerate(prompts):
            input_ids, instruction = self._encode_prompt(prompt)
            feature = {"input_ids": input_ids, "instruction_mask": instruction}
            if tasks is not None:
                feature["task_label"] = Task(tasks[i]).index
            features.append(feature)
        return self.batch(features, requests, source, padding_side="left")

    def pixel_views(self, images) -> tuple[list, object]:
        """PIL ``images`` as view requests of a source that preprocesses them (pixels, no cache)."""
        from skymoe.data.feature_cache import Produced, PixelSource, ViewRequest

        requests = [ViewRequest(f"image:{i}", lambda image=image: Produced(image)) for i, image in enumerate(images)]
        return requests, PixelSource(self.preprocess_images)

    def batch(self, features: list[dict], requests: list, source, *, padding_side: str = "right") -> dict:
        """Encoded rows padded into a batch with their views' tensors from ``source`` (under its ``batch_key``),
        and, for a zoom model, the zoom of each row's box (:meth:`with_zoom`)."""
        import torch

        visual = torch.stack([e.tensor for e in source.get(requests)])
        return self.with_zoom(self.pad(features, visual, padding_side=padding_side, image_key=source.batch_key),
                              features, requests, source)

    def with_zoom(self, batch: dict, features: list[dict], requests: list, source) -> dict:
        """``batch`` with, for a zoom model, each row's zoom of its instruction's box through ``source``."""
        from skymoe.data.zoom import zoom_inputs

        if self.zoom:
            batch.update(zoom_inputs(features, requests, source, self.location_start, self.zoom_size))
        return batch

    def decode(self, token_ids) -> list[str]:
        """Generated ids (the new tokens only, or whole sequences) -> stripped answer strings."""
        texts = self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)
        if self.location_tokens:
            texts = [loc_to_canonical(t) for t in texts]
        return [t.strip() for t in texts]

    # ---- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            **asdict(self.image),
            "num_image_tokens": self.num_image_tokens,
            "num_route_tokens": self.num_route_tokens,
            "max_length": self.max_length,
            "blind": self.blind,
            "zoom": self.zoom,
            "zoom_size": self.zoom_size,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        (directory / PROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "SkyMoEProcessor":
        from transformers import AutoTokenizer

        directory = Path(directory)
        config_path = directory / PROCESSOR_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} not found: not a SkyMoE model/processor directory")
        settings = json.loads(config_path.read_text(encoding="utf-8"))
        return cls(AutoTokenizer.from_pretrained(directory), **settings)
