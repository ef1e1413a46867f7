"""One scorer per task family; each maps a list of :class:`~skymoe.eval.records.Prediction`
to a dict of metrics and names its primary metric (the one tables lead with)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from skymoe.data.schema import Task
from skymoe.eval.records import Prediction
from skymoe.eval.scorers import caption, classification, counting, grounding, vqa


@dataclass(frozen=True)
class Scorer:
    name: str
    score: Callable[[list[Prediction]], dict]
    primary: str


SCORERS: dict[str, Scorer] = {
    s.name: s
    for s in (
        Scorer("caption", caption.score, caption.PRIMARY),
        Scorer("vqa", vqa.score, vqa.PRIMARY),
        Scorer("classification", classification.score, classification.PRIMARY),
        Scorer("multilabel", classification.score_multilabel, classification.MULTILABEL_PRIMARY),
        Scorer("grounding", grounding.score, grounding.PRIMARY),
        Scorer("counting", counting.score, counting.PRIMARY),
    )
}

# The scorer a task uses unless a suite says otherwise.
DEFAULT_SCORER: dict[str, str] = {
    Task.CAPTION.value: "caption",
    Task.REGION_CAPTION.value: "caption",
    Task.VQA.value: "vqa",
    Task.CLASSIFICATION.value: "classification",
    Task.MULTILABEL.value: "multilabel",
    Task.GROUNDING.value: "grounding",
    Task.COUNTING.value: "counting",
}
