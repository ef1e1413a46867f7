"""Build the structured ``metrics.json`` from predictions (format in docs/ARCHITECTURE.md).

Pure function of the predictions: ``skymoe score`` on a saved ``predictions.jsonl``
reproduces the ``metrics.json`` of ``skymoe eval`` byte for byte.
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

from skymoe.data.schema import Task
from skymoe.errors import DataError
from skymoe.eval.records import Prediction
from skymoe.eval.routing import analyse_routing
from skymoe.eval.scorers import DEFAULT_SCORER, SCORERS, Scorer, vqa

METRICS_FORMAT = "skymoe-metrics/1"
QA_TASKS = (Task.VQA.value, Task.COUNTING.value)
NO_BASELINE = {"status": "unavailable", "reason": "no record carries a baseline answer (the suite has no baseline split)"}


def scorer_of(predictions: list[Prediction]) -> Scorer:
    names = {p.scorer or DEFAULT_SCORER[p.task] for p in predictions}
    if len(names) != 1:
        raise DataError(f"records of task {predictions[0].task!r} name different scorers {sorted(names)}", field="scorer")
    name = names.pop()
    if name not in SCORERS:
        raise DataError(f"unknown scorer {name!r}; allowed: {sorted(SCORERS)}", record=predictions[0].id, field="scorer")
    return SCORERS[name]


def _group(predictions: list[Prediction], key: Callable[[Prediction], str]) -> dict[str, list[Prediction]]:
    groups: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        groups[key(p)].append(p)
    return dict(sorted(groups.items()))


def score_by_task(predictions: list[Prediction]) -> dict[str, dict]:
    return {task: scorer_of(group).score(group) for task, group in _group(predictions, lambda p: p.task).items()}


def _primary(predictions: list[Prediction]) -> dict:
    scorer = scorer_of(predictions)
    return {"n": len(predictions), "metric": scorer.primary, "value": scorer.score(predictions)[scorer.primary]}


def _by_question_type(predictions: list[Prediction]) -> dict:
    typed = [p for p in predictions if p.question_type]
    return {
        group: {
            task: {qt: _primary(q) for qt, q in _group(by_task, lambda p: p.question_type).items()}
            for task, by_task in _group(members, lambda p: p.task).items()
        }
        for group, members in _group(typed, lambda p: p.group).items()
    }


def _question_answering(predictions: list[Prediction]) -> dict:
    """RSVQA-style OA/AA per dataset over every question type, whichever task each type was given."""
    qa = [p for p in predictions if p.task in QA_TASKS]
    return {group: vqa.score(members) for group, members in _group(qa, lambda p: p.group).items()}


def _overall(predictions: list[Prediction], by_task: dict[str, dict]) -> dict:
    overall = {}
    for task, members in _group(predictions, lambda p: p.task).items():
        scorer = scorer_of(members)
        overall[task] = {"n": len(members), "scorer": scorer.name, "metric": scorer.primary, "value": by_task[task][scorer.primary]}
    return overall


def score_predictions(predictions: list[Prediction]) -> dict:
    """Metrics overall (primary metric per task), per task, granularity, dataset/split and question type."""
    by_task = score_by_task(predictions)
    return {
        "n": len(predictions),
        "overall": _overall(predictions, by_task),
        "by_task": by_task,
        "by_granularity": {g: score_by_task(members) for g, members in _group(predictions, lambda p: p.granularity).items()},
        "by_dataset": {d: score_by_task(members) for d, members in _group(predictions, lambda p: p.group).items()},
        "by_question_type": _by_question_type(predictions),
        "question_answering": _question_answering(predictions),
    }


def compute_metrics(predictions: list[Prediction]) -> dict:
    with_baseline = [replace(p, prediction=p.baseline) for p in predictions if p.baseline is not None]
    return {
        "format": METRICS_FORMAT,
        "model": score_predictions(predictions),
        "baseline": score_predictions(with_baseline) if with_baseline else NO_BASELINE,
        "routing": analyse_routing(predictions),
    }


def dumps_metrics(metrics: dict) -> str:
    """Canonical JSON text (sorted keys, no NaN) so re-scoring is byte-identical."""
    return json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"
