"""The ``predictions.jsonl`` record: one line per evaluated sample (format in docs/ARCHITECTURE.md).

Everything ``skymoe score`` needs is in the record (references, boxes, the baseline's
answer, the routing decision), so scoring never needs the model or the data again.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from skymoe.data.schema import Granularity, Routing, Sample, Task, iter_json_objects
from skymoe.errors import DataError


@dataclass
class Prediction:
    id: str
    dataset: str
    split: str
    task: str
    granularity: str
    question: str
    prediction: str
    # VQA/classification/counting: accepted answers (any one matches); caption: the reference
    # captions; multilabel: the full set of true labels.
    references: list[str]
    question_type: str | None = None
    image: str = ""
    image_size: list[int] | None = None  # [W, H]
    gt_boxes: list[list[float]] = field(default_factory=list)  # pixel xyxy in the full image
    scorer: str | None = None  # scorer name (skymoe.eval.scorers.SCORERS); None = the task's default
    baseline: str | None = None  # the prior baseline's answer for this sample
    routing: Routing | None = None

    @property
    def group(self) -> str:
        return f"{self.dataset}/{self.split}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_sample(cls, sample: Sample, prediction: str, **extra) -> Prediction:
        references = sample.meta.get("references") or [sample.answer]
        if sample.task == Task.MULTILABEL:
            references = list(sample.meta.get("labels") or references)
        return cls(
            id=sample.id,
            dataset=sample.dataset,
            split=sample.split,
            task=sample.task.value,
            granularity=sample.granularity.value,
            question=sample.question,
            prediction=prediction,
            references=[str(r) for r in references],
            question_type=sample.question_type,
            image=sample.image,
            image_size=list(sample.image_size) if sample.image_size else None,
            gt_boxes=[list(b.as_tuple()) for b in sample.boxes],
            **extra,
        )

    @classmethod
    def from_dict(cls, d: dict, *, file: str | None = None) -> Prediction:
        record = d.get("id", "?")
        for key in ("id", "dataset", "split", "task", "granularity", "references"):
            if key not in d:
                raise DataError("missing required field", file=file, record=record, field=key)
        _check_choice(d["task"], [t.value for t in Task], file, record, "task")
        _check_choice(d["granularity"], [g.value for g in Granularity], file, record, "granularity")
        references = d["references"]
        if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
            raise DataError("expected a list of strings", file=file, record=record, field="references")
        if not references and d["task"] != Task.GROUNDING.value:
            raise DataError("no reference answer", file=file, record=record, field="references")
        routing = d.get("routing")
        return cls(
            id=str(d["id"]),
            dataset=str(d["dataset"]),
            split=str(d["split"]),
            task=d["task"],
            granularity=d["granularity"],
            question=str(d.get("question") or ""),
            prediction=prediction_text(d.get("prediction")),
            references=references,
            question_type=d.get("question_type"),
            image=str(d.get("image") or ""),
            image_size=list(d["image_size"]) if d.get("image_size") else None,
            gt_boxes=_boxes(d.get("gt_boxes") or [], file, record),
            scorer=d.get("scorer"),
            baseline=d.get("baseline"),
            routing=Routing(**routing) if routing else None,
        )


def prediction_text(value) -> str:
    """A missing/None/NaN prediction is an empty answer (scored as wrong), not an error."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


def _check_choice(value, allowed: list[str], file, record, name: str) -> None:
    if value not in allowed:
        raise DataError(f"unknown {name} {value!r}; expected one of {allowed}", file=file, record=record, field=name)


def _boxes(value, file, record) -> list[list[float]]:
    try:
        boxes = [[float(v) for v in box] for box in value]
    except (TypeError, ValueError):
        boxes = None
    if boxes is None or any(len(b) != 4 or not all(math.isfinite(v) for v in b) for b in boxes):
        raise DataError(f"expected a list of [x1, y1, x2, y2] pixel boxes, got {value!r}", file=file, record=record, field="gt_boxes")
    return boxes


def write_predictions(predictions: list[Prediction], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for p in predictions:
            f.write(json.dumps(p.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")
    tmp.replace(path)


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read and validate ``predictions.jsonl``; duplicate ids are an error."""
    predictions, seen = [], set()
    for _, d in iter_json_objects(path):
        p = Prediction.from_dict(d, file=str(path))
        if (p.group, p.id) in seen:
            raise DataError("duplicate id", file=str(path), record=p.id, field="id")
        seen.add((p.group, p.id))
        predictions.append(p)
    if not predictions:
        raise DataError("no predictions", file=str(path))
    return predictions
