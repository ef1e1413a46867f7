"""Batched greedy generation for evaluation, with the router's decision for every sample."""
from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from skymoe.data.schema import GRANULARITIES, TASKS, Sample, Turn
from skymoe.eval.records import Prediction, Routing
from skymoe.eval.suite import Suite


def load_model(model_dir: str | Path):
    """(model, processor) from a ``save_pretrained`` directory, in eval mode."""
    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.model import SkyMoEForConditionalGeneration

    model = SkyMoEForConditionalGeneration.from_pretrained(model_dir)
    model.eval()
    return model, SkyMoEProcessor.from_pretrained(model_dir)


def build_prompt(sample: Sample, suite: Suite) -> list[Turn]:
    """The conversation up to the answer to predict, the first instruction put through the suite's template."""
    turns = list(sample.conversation)
    if turns and turns[-1].role == "assistant":
        turns = turns[:-1]
    return [Turn("user", suite.prompt_for(sample))] + turns[1:]


def routing_of(output, index: int) -> Routing | None:
    """The router's decision for sample ``index`` of a forward output (None for a dense model)."""
    if output.task_logits is None or output.sample_expert_weights is None:
        return None
    return Routing(
        task=TASKS[int(output.task_logits[index].argmax())].value,
        granularity=GRANULARITIES[int(output.granularity_logits[index].argmax())].value,
        expert_weights=output.sample_expert_weights[index].float().tolist(),
    )


def greedy_generate(model, processor, inputs: dict, max_new_tokens: int) -> list[str]:
    """Greedy answers (new tokens only) for ``processor.prepare_generation`` inputs."""
    import torch

    with torch.no_grad():
        generated = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=processor.ids["pad"],
            eos_token_id=processor.ids["eos"],
        )
    return processor.decode(generated[:, inputs["input_ids"].shape[1] :])


def generate_batch(model, processor, samples: list[Sample], suite: Suite) -> list[Prediction]:
    import torch

    from skymoe.data.imagery import load_image

    images = [load_image(s.image) for s in samples]
    inputs = processor.prepare_generation(images, [build_prompt(s, suite) for s in samples])
    with torch.no_grad():
        routed = model(**inputs)  # one prefill pass for the routing decision (what the router saw: the prompt)
    texts = greedy_generate(model, processor, inputs, suite.generation.max_new_tokens)
    return [
        Prediction.from_sample(s, text, scorer=suite.scorer_for(s.task.value), routing=routing_of(routed, i))
        for i, (s, text) in enumerate(zip(samples, texts))
    ]


def generate_predictions(model, processor, samples: list[Sample], suite: Suite, batch_size: int | None = None) -> list[Prediction]:
    batch_size = batch_size or suite.generation.batch_size
    predictions: list[Prediction] = []
    with tqdm(total=len(samples), desc="eval", unit="sample") as bar:
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            predictions += generate_batch(model, processor, batch, suite)
            bar.update(len(batch))
    return predictions
