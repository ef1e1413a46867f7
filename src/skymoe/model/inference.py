"""Running a trained model: load it, decode greedily, read the router's decision per sample.

Shared by evaluation (:mod:`skymoe.eval.predict`) and inference (:mod:`skymoe.infer.pipeline`),
which must not import each other.
"""
from __future__ import annotations

from pathlib import Path

import torch

from skymoe.data.schema import GRANULARITIES, TASKS, Routing


def load_model(model_dir: str | Path):
    """(model, processor) from a ``save_pretrained`` directory, in eval mode."""
    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.model.modeling import SkyMoEForConditionalGeneration

    model = SkyMoEForConditionalGeneration.from_pretrained(model_dir)
    model.eval()
    return model, SkyMoEProcessor.from_pretrained(model_dir)


def routing_of(output, index: int) -> Routing | None:
    """The router's decision for sample ``index`` of a forward output (None for a dense model)."""
    if output.task_logits is None or output.sample_expert_weights is None:
        return None
    return Routing(
        task=TASKS[int(output.task_logits[index].argmax())].value,
        granularity=GRANULARITIES[int(output.granularity_logits[index].argmax())].value,
        expert_weights=output.sample_expert_weights[index].float().tolist(),
    )


def routing_decisions(model, inputs: dict) -> list[Routing | None]:
    """The router's decision per sample, from one prefill pass over the prompt (what the router sees)."""
    with torch.no_grad():
        output = model(**inputs)
    return [routing_of(output, i) for i in range(inputs["input_ids"].shape[0])]


def greedy_generate(model, processor, inputs: dict, max_new_tokens: int) -> list[str]:
    """Greedy answers (new tokens only) for ``processor.prepare_generation`` inputs."""
    with torch.no_grad():
        generated = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=processor.ids["pad"],
            eos_token_id=processor.ids["eos"],
        )
    return processor.decode(generated[:, inputs["input_ids"].shape[1] :])
