"""Batched greedy generation for evaluation, with the router's decision for every sample.

Samples are generated in batches of one task and question type (answers of a kind have similar
lengths, and a batch runs until its longest answer ends), and their images come through a feature
source: the frozen tower's cached features when it has them (:mod:`skymoe.model.feature_source`).
"""
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


def generate_batch(model, processor, samples: list[Sample], suite: Suite, source=None) -> list[Prediction]:
    """Predictions of one batch; ``source`` (a feature cache) defaults to decoding the images here."""
    from skymoe.data.feature_cache import PixelSource, image_request
    from skymoe.data.imagery import load_image
    from skymoe.model.generation import generate_answers

    source = source if source is not None else PixelSource(processor.preprocess_images)
    requests = [image_request(s.image, load_image, blind=processor.blind) for s in samples]
    prompts = [build_prompt(s, suite) for s in samples]
    answers = generate_answers(model, processor, None, prompts, suite.generation.max_new_tokens, source=source, requests=requests)
    return [
        Prediction.from_sample(s, answer.text, scorer=suite.scorer_for(s.task.value), routing=answer.routing)
        for s, answer in zip(samples, answers)
    ]


def generate_predictions(model, processor, samples: list[Sample], suite: Suite, batch_size: int | None = None,
                         source=None) -> list[Prediction]:
    """Predictions in the order of ``samples``; ``source`` defaults to the model's feature cache."""
    from skymoe.model.feature_source import feature_source

    source = source if source is not None else feature_source(model, processor)
    batch_size = batch_size or suite.generation.batch_size
    order = sorted(range(len(samples)), key=lambda i: (samples[i].task.value, samples[i].question_type or "", i))
    predictions: list[Prediction | None] = [None] * len(samples)
    with tqdm(total=len(samples), desc="eval", unit="sample") as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, prediction in zip(chunk, generate_batch(model, processor, [samples[i] for i in chunk], suite, source)):
                predictions[i] = prediction
            bar.update(len(chunk))
    return predictions  # type: ignore[return-value]
