"""Object counting: exact accuracy, MAE and RMSE.

The count is the first number in the normalised text (number words become
digits, see :mod:`skymoe.eval.scorers.text`). A prediction without a number is a
*parse failure*: it is wrong for exact accuracy and enters MAE/RMSE as a count of
0 (so a model that writes garbage cannot improve its error by being unparsable);
the failure rate is reported. A reference without a number is a data error.
"""
from __future__ import annotations

import math

from skymoe.data.schema import SkyMoEDataError
from skymoe.eval.records import Prediction
from skymoe.eval.scorers.text import parse_number

PRIMARY = "exact_accuracy"


def _true_count(p: Prediction) -> float:
    value = parse_number(p.references[0])
    if value is None:
        raise SkyMoEDataError(f"reference {p.references[0]!r} holds no count", record=p.id, field="references")
    return value


def score(predictions: list[Prediction]) -> dict:
    errors, exact, failures = [], 0, 0
    for p in predictions:
        truth, predicted = _true_count(p), parse_number(p.prediction)
        if predicted is None:
            failures += 1
            predicted = 0.0
        else:
            exact += predicted == truth
        errors.append(predicted - truth)
    n = len(predictions)
    return {
        "n": n,
        "exact_accuracy": exact / n,
        "mae": sum(abs(e) for e in errors) / n,
        "rmse": math.sqrt(sum(e * e for e in errors) / n),
        "parse_failure_rate": failures / n,
        "parse_failures": failures,
    }
