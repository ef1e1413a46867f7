"""lmms-eval tasks over the embedded RSVQA sets, read through skymoe.data.datasets (offline).

Answers are scored with SkyMoE's own VQA rules (skymoe.eval.scorers.text), so
lmms-eval and ``skymoe eval`` agree on what counts as correct.
"""
from __future__ import annotations

from collections import defaultdict

from datasets import Dataset, DatasetDict
from lmms_eval.api.task import ConfigurableTask

from skymoe.eval.scorers.text import answers_match


class SkyMoERSVQATask(ConfigurableTask):
    """``dataset_kwargs: {skymoe_dataset: NAME, skymoe_split: SPLIT}`` selects the embedded data."""

    def __init__(self, *args, config: dict | None = None, **kwargs) -> None:
        config = {k: v for k, v in (config or {}).items() if k != "class"}
        super().__init__(*args, config=config, **kwargs)

    def download(self, dataset_kwargs: dict | None = None) -> None:
        from skymoe.data.datasets import load_dataset

        kwargs = dataset_kwargs or {}
        samples = load_dataset(kwargs["skymoe_dataset"], kwargs["skymoe_split"])
        rows = [
            {"id": s.id, "image": s.image, "question": s.question, "answer": s.answer, "question_type": s.question_type or ""}
            for s in samples
        ]
        self.dataset = DatasetDict({self.config.test_split: Dataset.from_list(rows)})
        self.dataset_no_image = self.dataset


def doc_to_visual(doc: dict) -> list[str]:
    return [doc["image"]]  # a path: the model reads it with skymoe.data.imagery (GeoTIFF included)


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def process_results(doc: dict, results: list[str]) -> dict:
    correct = answers_match(results[0], doc["answer"])
    return {"overall_accuracy": float(correct), "average_accuracy": {"question_type": doc["question_type"], "correct": correct}}


def average_accuracy(items: list[dict]) -> float:
    """RSVQA's AA: the unweighted mean of per-question-type accuracies."""
    by_type = defaultdict(list)
    for item in items:
        by_type[item["question_type"]].append(item["correct"])
    return sum(sum(v) / len(v) for v in by_type.values()) / len(by_type)
