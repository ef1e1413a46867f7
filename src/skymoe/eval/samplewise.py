"""Every scorer's primary metric as per-sample statistics, for paired bootstrap intervals.

A metric is ``reduce(sum of the per-sample statistics)``: the mean of a 0/1 or a
per-sample score (accuracy, Acc@0.5, CIDEr: pycocoevalcap's CIDEr-D *is* the mean of
its per-caption scores, with the IDF of the scored set), or micro-F1 from summed
(tp, fp, fn). Resampling samples and reducing the resampled sums gives the
metric's bootstrap distribution, and the same resample of several models'
statistics gives a paired one. :func:`stats_of` agrees with the scorers
(tests check ``reduce(stats.sum(0)) == score(...)[primary]``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from skymoe.eval.records import Prediction


@dataclass
class SampleStats:
    values: np.ndarray  # [n, k]
    reduce: Callable[[np.ndarray], float]  # [..., k] sums -> metric

    def metric(self) -> float:
        return float(self.reduce(self.values.sum(axis=0)))


def _mean_of(values: list[float]) -> SampleStats:
    """Per-sample scores and a count column: the metric is their sum over the count."""
    array = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    return SampleStats(np.hstack([array, np.ones_like(array)]), lambda sums: sums[..., 0] / np.maximum(sums[..., 1], 1))


def _micro_f1(sums: np.ndarray) -> np.ndarray:
    tp, fp, fn = sums[..., 0], sums[..., 1], sums[..., 2]
    return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp, dtype=np.float64), where=(2 * tp + fp + fn) > 0)


def stats_of(scorer: str, predictions: list[Prediction]) -> SampleStats:
    """Per-sample statistics of ``scorer``'s primary metric over ``predictions`` (one task, one group)."""
    from skymoe.eval.scorers import caption, classification, counting, grounding, vqa
    from skymoe.eval.scorers.text import normalize_answer, parse_number

    if scorer == "vqa":
        return _mean_of([float(vqa.is_correct(p)) for p in predictions])
    if scorer == "classification":
        hits = []
        for p in predictions:
            truth = normalize_answer(p.references[0])
            hits.append(float(classification._predicted_class(p, truth) == truth))
        return _mean_of(hits)
    if scorer == "counting":
        hits = []
        for p in predictions:
            truths, predicted = counting._true_counts(p), parse_number(p.prediction)
            hits.append(float(predicted is not None and predicted in truths))
        return _mean_of(hits)
    if scorer == "grounding":
        return _mean_of([float((grounding.sample_iou(p) or 0.0) >= grounding.IOU_THRESHOLD) for p in predictions])
    if scorer == "caption":
        return _mean_of(_cider_per_sample(predictions, caption))
    if scorer == "multilabel":
        return _multilabel_stats(predictions, classification)
    raise ValueError(f"no per-sample statistics for scorer {scorer!r}")


def _cider_per_sample(predictions: list[Prediction], caption) -> list[float]:
    from pycocoevalcap.cider.cider import Cider

    keys = [str(i) for i in range(len(predictions))]
    refs = caption.tokenize({k: p.references for k, p in zip(keys, predictions)})
    cands = caption.tokenize({k: [p.prediction] for k, p in zip(keys, predictions)})
    _, scores = Cider().compute_score(refs, {k: [v[0]] for k, v in cands.items()})
    return [float(s) for s in scores]


def _multilabel_stats(predictions: list[Prediction], classification) -> SampleStats:
    vocabulary = sorted({label for p in predictions for label in p.references})
    rows = []
    for p in predictions:
        named = classification.labels_in_text(p.prediction, vocabulary)
        other = any(part.strip() and not classification.labels_in_text(part, vocabulary) for part in p.prediction.split(";"))
        truth = set(p.references)
        rows.append([len(named & truth), len(named - truth) + int(other), len(truth - named)])
    return SampleStats(np.asarray(rows, dtype=np.float64).reshape(-1, 3), _micro_f1)
