"""Pipeline: a trained SkyMoE model behind one call per remote-sensing task.

    pipe = Pipeline.from_pretrained("runs/demo/model")
    pipe.caption("scene.tif").text
    pipe.ground(image, "the storage tank").boxes        # pixel boxes in the input image
    pipe.count([a, b, c], "buildings")                   # a list in, a list out (batched)

Images are paths (PNG/JPEG/TIFF/GeoTIFF), PIL images, numpy arrays or open
rasterio datasets (:func:`skymoe.data.imagery.load_image`). Every method takes
one image or a list; lists run in batches of ``batch_size``. ``bands`` (1-based,
e.g. ``(4, 3, 2)`` for Sentinel-2) picks the RGB bands of TIFF/GeoTIFF files,
rasterio datasets and arrays (default: 1-3, or band 1 as grey). With
``routing=True`` each answer carries the router's decision (task,
granularity, expert weights per MoE layer).
"""
from __future__ import annotations

import functools
import re

import numpy as np
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skymoe.data.boxes import format_box, parse_boxes
from skymoe.data.prompts import LABEL_SEPARATOR, PROMPTS
from skymoe.data.schema import Box, Granularity, Routing, Sample, Task, Turn

_INTEGER = re.compile(r"-?\d+")
# What Pipeline.run's ``prompt`` means for the tasks that need one.
PROMPT_MEANING = {Task.VQA: "a question", Task.GROUNDING: "what to locate", Task.COUNTING: "what to count"}


@dataclass
class Answer:
    text: str
    task: str
    image_size: tuple[int, int]  # (W, H) of the input image
    boxes: list[Box] = field(default_factory=list)  # grounding: pixel xyxy in the input image
    count: int | None = None  # counting: the first integer of the answer
    labels: list[str] = field(default_factory=list)  # multilabel: the classes the answer names
    routing: Routing | None = None
    prompt_tokens: int = 0  # model input tokens (image and routing placeholders included) of a generated answer

    def to_dict(self) -> dict:
        d = asdict(self)
        d["boxes"] = [b.to_dict() for b in self.boxes]
        d["image_size"] = list(self.image_size)
        return d


def _as_list(value) -> tuple[list, bool]:
    """(items, was_single): a lone image/string becomes a one-item list."""
    if isinstance(value, (list, tuple)):
        return list(value), False
    return [value], True


def _is_one_box(value) -> bool:
    """A Box or four numbers (Python or numpy), not a list of boxes."""
    return isinstance(value, Box) or (len(value) == 4 and all(np.ndim(v) == 0 and not isinstance(v, Box) for v in value))


def _as_box(value) -> Box:
    return value if isinstance(value, Box) else Box(*map(float, value))


def _broadcast(value, n: int, what: str) -> list:
    values, single = _as_list(value)
    if single:
        return values * n
    if len(values) != n:
        raise ValueError(f"{n} images but {len(values)} {what}")
    return values


def check_request(task: Task | str, prompt: str | None, box) -> Task:
    """``task`` as a Task, after checking it has the input it needs (a prompt, or a box for region_caption)."""
    task = Task(task)
    if task in PROMPT_MEANING and not (prompt or "").strip():
        raise ValueError(f"empty prompt: task {task.value} needs {PROMPT_MEANING[task]}")
    if task == Task.REGION_CAPTION and box is None:
        raise ValueError("task region_caption needs a box (x1, y1, x2, y2 in pixels)")
    return task


def _named_labels(text: str, vocabulary: Sequence[str] | None) -> list[str]:
    """The labels of a multilabel answer (split as the training answers are joined), kept to ``vocabulary`` if given."""
    named = list(dict.fromkeys(part.strip() for part in text.split(LABEL_SEPARATOR.strip()) if part.strip()))
    if not vocabulary:
        return named
    canonical = {label.casefold(): label for label in vocabulary}
    return [canonical[label.casefold()] for label in named if label.casefold() in canonical]


def _offset_rows(on_text: Callable[[int, str], None], offset: int, row: int, text: str) -> None:
    on_text(offset + row, text)


class Pipeline:
    def __init__(self, model, processor, *, batch_size: int = 8, max_new_tokens: int = 48, bands: Sequence[int] | None = None):
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.bands = list(bands) if bands is not None else None

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, quantize: str | None = None, **kwargs) -> "Pipeline":
        """Model + processor from a ``save_pretrained`` directory; ``quantize="int8"`` for CPU dynamic int8."""
        from skymoe.model.inference import load_model
        from skymoe.model.quantize import quantize_int8

        if quantize not in (None, "int8"):
            raise ValueError(f"quantize={quantize!r}; expected None or 'int8'")
        model, processor = load_model(directory)
        if quantize == "int8":
            quantize_int8(model)
        return cls(model, processor, **kwargs)

    @property
    def model_name(self) -> str:
        """The model folder's name (not its path: the server shows it to clients)."""
        return Path(str(getattr(self.model.config, "_name_or_path", "") or "skymoe")).name

    # ---- core -----------------------------------------------------------------------------------
    def load(self, image, *, max_pixels: int | None = None):
        """One input as an RGB PIL image, with ``self.bands`` where the input has bands to choose."""
        from skymoe.data.imagery import DEFAULT_MAX_PIXELS, is_raster_source, load_image

        bands = self.bands if is_raster_source(image) else None
        return load_image(image, bands=bands, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)

    def generate(self, images, prompts, *, task: Task | str = Task.VQA, routing: bool = False, max_new_tokens: int | None = None,
                 on_text: Callable[[int, str], None] | None = None):
        """Answers to ``prompts`` about ``images``: one prompt for all images or one per image.

        A prompt is a question, or a conversation (list of Turns ending with a user turn).
        ``on_text(index, piece)`` streams each answer as it is generated (index into ``images``).
        """
        images, single = _as_list(images)
        conversation = isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], Turn)
        prompts = [prompts] * len(images) if conversation else _broadcast(prompts, len(images), "prompts")
        for prompt in prompts:
            text = prompt[-1].text if isinstance(prompt, list) else prompt
            if not isinstance(text, str) or not text.strip():
                raise ValueError("empty prompt: give a question or instruction")
        task = Task(task)
        answers = []
        for start in range(0, len(images), self.batch_size):
            pil = [self.load(im) for im in images[start : start + self.batch_size]]
            stream = None if on_text is None else functools.partial(_offset_rows, on_text, start)
            answers += self._generate_batch(pil, prompts[start : start + self.batch_size], task, routing, max_new_tokens, stream)
        return answers[0] if single else answers

    def _generate_batch(self, images, prompts, task: Task, routing: bool, max_new_tokens: int | None, on_text=None) -> list[Answer]:
        from skymoe.model.inference import generate_with_routing

        inputs = self.processor.prepare_generation(images, prompts)
        texts, decisions = generate_with_routing(self.model, self.processor, inputs, max_new_tokens or self.max_new_tokens,
                                                 on_text, routing=routing)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [self._answer(t, task, im.size, r, n) for t, im, r, n in zip(texts, images, decisions, lengths)]

    @staticmethod
    def _answer(text: str, task: Task, image_size: tuple[int, int], routing: Routing | None, prompt_tokens: int) -> Answer:
        answer = Answer(text=text, task=task.value, image_size=tuple(image_size), routing=routing, prompt_tokens=prompt_tokens)
        if task == Task.GROUNDING:
            answer.boxes = parse_boxes(text, image_size).boxes
        elif task == Task.COUNTING:
            match = _INTEGER.search(text)
            answer.count = int(match.group()) if match else None
        elif task == Task.MULTILABEL:
            answer.labels = _named_labels(text, None)
        return answer

    # ---- tasks ----------------------------------------------------------------------------------
    def run(self, images, task: Task | str, prompt: str | None = None, *, labels: Sequence[str] | None = None,
            box: Sequence[float] | None = None, **kwargs):
        """One entry point for every task (CLI, server, UI): ``prompt`` is the question (vqa),
        the referring expression (grounding) or the object name (counting); ``box`` the region (region_caption);
        ``labels`` the classes to choose from (classification: one, multilabel: any)."""
        task = check_request(task, prompt, box)
        if task == Task.VQA:
            return self.ask(images, prompt, **kwargs)
        if task == Task.CAPTION:
            return self.caption(images, **kwargs)
        if task == Task.CLASSIFICATION:
            return self.classify(images, labels, **kwargs)
        if task == Task.MULTILABEL:
            return self.multilabel(images, labels, **kwargs)
        if task == Task.GROUNDING:
            return self.ground(images, prompt, **kwargs)
        if task == Task.COUNTING:
            return self.count(images, prompt, **kwargs)
        items, single = _as_list(images)
        answers = [self.describe_region(image, box, **kwargs) for image in items]
        return answers[0] if single else answers

    def ask(self, images, question, **kwargs):
        return self.generate(images, question, task=Task.VQA, **kwargs)

    def caption(self, images, **kwargs):
        return self.generate(images, PROMPTS[Task.CAPTION], task=Task.CAPTION, **kwargs)

    def _templated(self, images, task: Task, key: str, values, **kwargs):
        """Run ``PROMPTS[task]`` filled with ``values`` (one for all images, or one per image)."""
        items, single = _as_list(images)
        prompts = [PROMPTS[task].format(**{key: v}) for v in _broadcast(values, len(items), key)]
        return self.generate(items[0] if single else items, prompts[0] if single else prompts, task=task, **kwargs)

    def ground(self, images, query, **kwargs):
        """Boxes of ``query`` (a referring expression); ``Answer.boxes`` in pixels of each image."""
        return self._templated(images, Task.GROUNDING, "query", query, **kwargs)

    def count(self, images, object_name, **kwargs):
        """How many ``object_name`` (plural noun) there are; ``Answer.count`` holds the number."""
        return self._templated(images, Task.COUNTING, "object", object_name, **kwargs)

    def describe_region(self, images, box, **kwargs):
        """Description of a pixel box (xyxy) of each image: ``box`` is one box for every image, or a list of one per image."""
        items, single = _as_list(images)
        boxes = [box] * len(items) if _is_one_box(box) else _broadcast(list(box), len(items), "boxes")
        pil = [self.load(im) for im in items]
        prompts = [PROMPTS[Task.REGION_CAPTION].format(box=format_box(_as_box(b).validate(im.size), im.size)) for im, b in zip(pil, boxes)]
        return self.generate(pil[0] if single else pil, prompts[0] if single else prompts, task=Task.REGION_CAPTION, **kwargs)

    def classify(self, images, labels: Sequence[str] | None = None, **kwargs):
        """Scene class: free generation, or with ``labels`` the most likely label (mean log-likelihood per token)."""
        if not labels:
            return self.generate(images, PROMPTS[Task.CLASSIFICATION], task=Task.CLASSIFICATION, **kwargs)
        from skymoe.model.inference import routing_decisions

        items, single = _as_list(images)
        answers = []
        for start in range(0, len(items), self.batch_size):
            pil = [self.load(im) for im in items[start : start + self.batch_size]]
            decisions = [None] * len(pil)
            if kwargs.get("routing"):
                inputs = self.processor.prepare_generation(pil, [PROMPTS[Task.CLASSIFICATION]] * len(pil))
                decisions = routing_decisions(self.model, inputs)
            for image, decision in zip(pil, decisions):
                scores = self.label_scores(image, labels)
                answers.append(Answer(max(scores, key=scores.get), Task.CLASSIFICATION.value, image.size, routing=decision))
        return answers[0] if single else answers

    def multilabel(self, images, labels: Sequence[str] | None = None, **kwargs):
        """Classes present (``Answer.labels``), as the model names them; with ``labels`` only those classes are kept.

        Generated, not scored per label: without a per-label threshold, log-likelihoods cannot say how many classes apply.
        """
        answers = self.generate(images, PROMPTS[Task.MULTILABEL], task=Task.MULTILABEL, **kwargs)
        if labels:
            for answer in _as_list(answers)[0]:
                answer.labels = _named_labels(answer.text, labels)
        return answers

    def label_scores(self, image, labels: Sequence[str]) -> dict[str, float]:
        """Mean per-token log-likelihood of each label as the classification answer for one image."""
        import torch

        pil = self.load(image)
        samples = [
            Sample(id=str(i), image="-", task=Task.CLASSIFICATION, granularity=Granularity.IMAGE,
                   conversation=[Turn("user", PROMPTS[Task.CLASSIFICATION]), Turn("assistant", label)])
            for i, label in enumerate(labels)
        ]
        batch = self.processor.collate(samples, [pil] * len(samples))
        targets = batch.pop("labels")[:, 1:]
        for key in ("task_labels", "granularity_labels"):
            batch.pop(key, None)
        with torch.inference_mode():
            logits = self.model(**batch).logits[:, :-1].float()
        mask = targets != -100
        logprobs = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        means = (logprobs * mask).sum(1) / mask.sum(1)
        return {label: float(v) for label, v in zip(labels, means)}
