"""Batched greedy generation for evaluation, with the router's decision for every sample."""
from __future__ import annotations

from tqdm.auto import tqdm

from skymoe.data.schema import Sample, Turn
from skymoe.eval.records import Prediction
from skymoe.eval.suite import Suite


def build_prompt(sample: Sample, suite: Suite) -> list[Turn]:
    """The conversation up to the answer to predict, the first instruction put through the suite's template."""
    turns = list(sample.conversation)
    if turns and turns[-1].role == "assistant":
        turns = turns[:-1]
    return [Turn("user", suite.prompt_for(sample))] + turns[1:]


def generate_batch(model, processor, samples: list[Sample], suite: Suite) -> list[Prediction]:
    from skymoe.data.imagery import load_image
    from skymoe.model.inference import greedy_generate, routing_decisions

    images = [load_image(s.image) for s in samples]
    inputs = processor.prepare_generation(images, [build_prompt(s, suite) for s in samples])
    decisions = routing_decisions(model, inputs)
    texts = greedy_generate(model, processor, inputs, suite.generation.max_new_tokens)
    return [
        Prediction.from_sample(s, text, scorer=suite.scorer_for(s.task.value), routing=routing)
        for s, text, routing in zip(samples, texts, decisions)
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
