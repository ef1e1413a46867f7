"""Generating answers from a trained model: load it, decode greedily, read the router's decision per sample.

Shared by evaluation (:mod:`skymoe.eval.predict`) and inference (:mod:`skymoe.infer.pipeline`),
which must not import each other: both answer a batch through :func:`generate_answers`.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers.generation.streamers import BaseStreamer
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

from skymoe.data.boxes import hold_back_partial_box
from skymoe.data.processor import PROCESSOR_CONFIG, SkyMoEProcessor
from skymoe.data.schema import GRANULARITIES, TASKS, Routing
from skymoe.errors import ModelFolderError


def check_model_dir(model_dir: str | Path) -> None:
    """Raise a one-line ModelFolderError for the usual broken model folders (transformers raises multi-line OSErrors)."""
    directory = Path(model_dir)
    config = directory / "config.json"
    if not config.is_file():
        raise ModelFolderError("not a SkyMoE model directory (no config.json)", file=str(directory))
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"config.json is not valid JSON ({exc}); truncated copy?", file=str(directory)) from None
    if not isinstance(settings, dict):
        raise ModelFolderError("config.json holds no JSON object; expected the model config", file=str(directory))
    weights = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    if not any((directory / name).is_file() for name in weights):
        raise ModelFolderError(f"no model weights; expected {SAFE_WEIGHTS_NAME} next to config.json", file=str(directory))
    if not (directory / PROCESSOR_CONFIG).is_file():
        raise ModelFolderError(f"no {PROCESSOR_CONFIG}; expected the processor saved with the model", file=str(directory))


def load_model(model_dir: str | Path):
    """(model, processor) from a ``save_pretrained`` directory, in eval mode; a broken folder is a ModelFolderError."""
    from skymoe.model.modeling import SkyMoEForConditionalGeneration

    check_model_dir(model_dir)
    try:
        model = SkyMoEForConditionalGeneration.from_pretrained(model_dir)
        processor = SkyMoEProcessor.from_pretrained(model_dir)
    except (OSError, ValueError, SafetensorError) as exc:  # e.g. truncated weights, a broken tokenizer
        raise ModelFolderError(f"cannot load the model: {' '.join(str(exc).split())}", file=str(model_dir)) from None
    model.eval()
    return model, processor


def routing_of(output, index: int, model) -> Routing | None:
    """The router's decision for sample ``index`` of ``model``'s forward output or routing read-out (None for a
    dense model)."""
    if output.task_logits is None or output.sample_expert_weights is None:
        return None
    return Routing(
        task=TASKS[int(output.task_logits[index].argmax())].value,
        granularity=GRANULARITIES[int(output.granularity_logits[index].argmax())].value,
        expert_weights=output.sample_expert_weights[index].float().tolist(),
        level="llm" if model.has_expert_llms else "layer",
    )


def routing_decisions(model, inputs: dict) -> list[Routing | None]:
    """The router's decision per sample, from one prefill pass over the prompt (what the router sees)."""
    with torch.no_grad():
        output = model(**inputs)
    return [routing_of(output, i, model) for i in range(inputs["input_ids"].shape[0])]


class BatchTextStreamer(BaseStreamer):
    """Calls ``on_text(row, new_text)`` each time a row's decoded answer grows by a generated token.

    The pieces of a row join to its final answer (the same decode of the same tokens).

    transformers' own streamers accept batch size 1 only; a server batches requests. Each step
    re-decodes the row's tokens and sends the new suffix, so multi-token words and tokenizer
    clean-up come out right (answers are short: re-decoding is cheap).
    """

    def __init__(self, processor, on_text: Callable[[int, str], None]):
        self.processor, self.on_text = processor, on_text
        self.tokens: torch.Tensor | None = None  # [B, T] new tokens so far; None until the prompt went by
        self.prompt_seen = False
        self.sent: list[str] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt ids
            self.prompt_seen = True
            return
        step = value.reshape(-1, 1).cpu()
        self.tokens = step if self.tokens is None else torch.cat([self.tokens, step], dim=1)
        # A trailing U+FFFD is a character whose bytes are still arriving, trailing location tokens a box
        # not yet whole (it is sent as canonical text once complete): hold them back.
        self._send([hold_back_partial_box(text.rstrip("\ufffd")) for text in self.processor.decode(self.tokens)])

    def end(self) -> None:
        if self.tokens is not None:
            self._send(self.processor.decode(self.tokens))

    def _send(self, texts: list[str]) -> None:
        self.sent = self.sent or [""] * len(texts)
        for row, text in enumerate(texts):
            if len(text) > len(self.sent[row]) and text.startswith(self.sent[row]):
                self.on_text(row, text[len(self.sent[row]) :])
                self.sent[row] = text


def greedy_generate(model, processor, inputs: dict, max_new_tokens: int,
                    on_text: Callable[[int, str], None] | None = None) -> list[str]:
    """Greedy answers (new tokens only) for ``processor.prepare_generation`` inputs.

    ``on_text(row, text)``, if given, receives each row's answer piece by piece as it grows (see BatchTextStreamer).
    """
    return generate_with_routing(model, processor, inputs, max_new_tokens, on_text, routing=False)[0]


def generate_with_routing(model, processor, inputs: dict, max_new_tokens: int,
                          on_text: Callable[[int, str], None] | None = None, *,
                          routing: bool = True) -> tuple[list[str], list[Routing | None]]:
    """Greedy answers and, with ``routing``, the router's decision per row, read from the one prefill."""
    streamer = BatchTextStreamer(processor, on_text) if on_text is not None else None
    with torch.no_grad():
        generated = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=processor.ids["pad"],
            eos_token_id=processor.ids["eos"],
            streamer=streamer,
            output_routing=routing,
        )
    rows = range(inputs["input_ids"].shape[0])
    readout = generated.routing if routing else None
    sequences = generated.sequences if routing else generated
    texts = processor.decode(sequences[:, inputs["input_ids"].shape[1] :])
    return texts, [routing_of(readout, i, model) if readout is not None else None for i in rows]


@dataclass
class Generated:
    """One row's answer."""

    text: str
    routing: Routing | None
    prompt_tokens: int  # model input tokens (image and routing placeholders included)


def generate_answers(model, processor, images, prompts: list, max_new_tokens: int, *, source=None, requests=None,
                     routing: bool = True, on_text: Callable[[int, str], None] | None = None) -> list[Generated]:
    """Greedy answers to ``prompts`` (questions or lists of Turns), one per image, from one prefill.

    ``images`` are PIL images, or None with ``source`` and ``requests`` (e.g. the tower's feature cache and one
    view request per prompt: ``SkyMoEProcessor.prepare_generation``).
    """
    cached = {} if source is None else {"source": source, "requests": requests}
    inputs = processor.prepare_generation(images, prompts, **cached)
    texts, decisions = generate_with_routing(model, processor, inputs, max_new_tokens, on_text, routing=routing)
    lengths = inputs["attention_mask"].sum(dim=1).tolist()
    return [Generated(text, decision, n) for text, decision, n in zip(texts, decisions, lengths)]
