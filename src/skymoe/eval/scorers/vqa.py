"""Visual question answering: accuracy overall and per question type.

Conventions of the RSVQA papers (Lobry et al., 2020): every question has one
answer; a prediction is correct when it equals the answer after normalisation
(:mod:`skymoe.eval.scorers.text`; several accepted answers: any one matches).

* **Overall Accuracy (OA)** = correct answers / all questions;
* **Average Accuracy (AA)** = unweighted mean of the per-question-type accuracies.

Question types are taken from the data as they are (RSVQA-LR: presence, comp,
count, rural_urban; RSVQA-HR: presence, comp, count, area; HRVQA: its own types).
For ``count`` and ``area`` questions both the exact accuracy (used in OA/AA) and
the binned accuracy are reported under ``binned``; the bins are RSVQA's 0, 1-10,
11-100, 101-1000, >1000 (counts, or m² for areas); a prediction with no number is
wrong in both.

The embedded RSVQA and HRVQA readers give every question the task ``vqa``, count
questions included (``question_type`` ``count``, HRVQA ``numbers``). The metrics'
``question_answering`` block scores all ``vqa`` and ``counting`` records of a
dataset with :func:`score`, so a dataset's OA/AA cover all its question types.
"""
from __future__ import annotations

from collections import defaultdict

from skymoe.data.readers.rsvqa import COUNT_BIN_EDGES, count_bin
from skymoe.eval.records import Prediction
from skymoe.eval.scorers.text import answers_match, parse_number

PRIMARY = "overall_accuracy"
BINNED_TYPES = ("count", "area")


def is_correct(p: Prediction) -> bool:
    return any(answers_match(p.prediction, ref) for ref in p.references)


def _binned_correct(p: Prediction) -> bool:
    predicted = parse_number(p.prediction)
    truths = [n for n in (parse_number(r) for r in p.references) if n is not None]
    return predicted is not None and any(count_bin(predicted) == count_bin(t) for t in truths)


def score(predictions: list[Prediction]) -> dict:
    by_type: dict[str, list[bool]] = defaultdict(list)
    for p in predictions:
        by_type[p.question_type or "unspecified"].append(is_correct(p))
    per_type = {t: {"n": len(v), "accuracy": sum(v) / len(v)} for t, v in sorted(by_type.items())}
    all_correct = [c for v in by_type.values() for c in v]
    result = {
        "n": len(predictions),
        "overall_accuracy": sum(all_correct) / len(all_correct),
        "average_accuracy": sum(t["accuracy"] for t in per_type.values()) / len(per_type),
        "per_type": per_type,
        "empty_predictions": sum(1 for p in predictions if not p.prediction.strip()),
    }
    binned = {}
    for qtype in BINNED_TYPES:
        hits = [_binned_correct(p) for p in predictions if p.question_type == qtype]
        if hits:
            binned[qtype] = {"n": len(hits), "accuracy": sum(hits) / len(hits)}
    if binned:
        result["binned"] = binned
        result["bin_edges"] = list(COUNT_BIN_EDGES)
    return result
