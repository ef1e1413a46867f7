"""Object counting: exact accuracy, MAE and RMSE.

The count is the first number in the normalised text (number words become
digits, see :mod:`skymoe.eval.scorers.text`). With several accepted answers a
count is exact when it equals any of them, and its error is to the nearest. A prediction without a number is a
*parse failure*: it is wrong for exact accuracy and enters MAE/RMSE as a count of
0 (so a model that writes garbage cannot improve its error by being unparsable);
the failure rate is reported. A reference without a number is a data error.
"""
from __future__ import annotations

import math
from skymoe.errors import DataError
from skymoe.eval.records import Prediction
from skymoe.eval.scorers.text import parse_number

PRIMARY = "exact_accuracy"


def _true_counts(p: Prediction) -> list[float]:
    values = [parse_number(r) for r in p.references]
    if None in values:
        raise DataError(f"reference {p.references[values.index(None)]!r} holds no count", record=p.id, field="references")
    return values


def score(predictions: list[Prediction]) -> dict:
    errors, exact, failures = [], 0, 0
    for p in predictions:
        truths, predicted = _true_counts(p), parse_number(p.prediction)
        if predicted is None:
            failures += 1
            predicted = 0.0
        else:
            exact += predicted in truths
        errors.append(min((predicted - t for t in truths), key=abs))
    n = len(predictions)
    return {
        "n": n,
        "exact_accuracy": exact / n,
        "mae": sum(abs(e) for e in errors) / n,
        "rmse": math.sqrt(sum(e * e for e in errors) / n),
        "parse_failure_rate": failures / n,
        "parse_failures": failures,
    }
