"""Scene classification (single label) and multi-label classification.

Single label: the prediction, normalised (:mod:`skymoe.eval.scorers.text`), must
equal a normalised accepted answer (the first reference is the class); anything
that is not one of the classes seen in the references is counted in an
``<other>`` column of the confusion matrix.

* **OA** = correct / all; **AA** = mean over classes of per-class recall;
* confusion matrix: rows = true class, columns = predicted class (+ ``<other>``).

Multi-label: the class vocabulary is the union of the true label sets of the
scored records; a class is predicted when its normalised name occurs as a whole
phrase in the normalised prediction (longest names first, a matched span is not
reused, so "mixed forest" does not also count as "forest"). A prediction part
(labels are joined by ``;``, as in the training answers) that names none of the
classes is a false positive in an ``<other>`` column, so naming classes that are
not there costs precision even when no scored record has them.

* micro and macro F1 (scikit-learn, classes with no true and no predicted
  example give 0 and are kept in the macro mean);
* mAP = mean over classes with at least one positive of average precision. A
  generative model gives labels, not scores, so the scores are binary (1 if the
  class was named); ``map_scores`` says so in the output.
"""
from __future__ import annotations

import numpy as np

from skymoe.eval.records import Prediction
from skymoe.eval.scorers.text import normalize_answer

PRIMARY = "overall_accuracy"
MULTILABEL_PRIMARY = "micro_f1"
OTHER = "<other>"


def score(predictions: list[Prediction]) -> dict:
    from sklearn.metrics import confusion_matrix

    truths = [normalize_answer(p.references[0]) for p in predictions]
    classes = sorted(set(truths))
    predicted = [_predicted_class(p, truth) for p, truth in zip(predictions, truths)]
    predicted = [label if label in classes else OTHER for label in predicted]
    matrix = confusion_matrix(truths, predicted, labels=classes + [OTHER])[: len(classes)]
    recalls = [matrix[i, i] / matrix[i].sum() for i in range(len(classes))]
    return {
        "n": len(predictions),
        "overall_accuracy": float(np.trace(matrix[:, : len(classes)]) / len(predictions)),
        "average_accuracy": float(np.mean(recalls)),
        "per_class_accuracy": {c: float(r) for c, r in zip(classes, recalls)},
        "confusion_matrix": {"rows": classes, "columns": classes + [OTHER], "matrix": matrix.tolist()},
        "unrecognised_predictions": predicted.count(OTHER),
    }


def _predicted_class(p: Prediction, truth: str) -> str:
    """The normalised prediction, or the record's class when it matches any accepted answer."""
    answer = normalize_answer(p.prediction)
    return truth if answer in {normalize_answer(r) for r in p.references} else answer


def labels_in_text(text: str, vocabulary: list[str]) -> set[str]:
    """Classes of ``vocabulary`` named in ``text`` (whole normalised phrases, longest first)."""
    remaining = f" {normalize_answer(text)} "
    found = set()
    for label in sorted(vocabulary, key=lambda v: (-len(normalize_answer(v)), v)):
        phrase = f" {normalize_answer(label)} "
        if phrase.strip() and phrase in remaining:
            found.add(label)
            remaining = remaining.replace(phrase, " | ")
    return found


def score_multilabel(predictions: list[Prediction]) -> dict:
    from sklearn.metrics import average_precision_score, f1_score

    vocabulary = sorted({label for p in predictions for label in p.references})
    named = [labels_in_text(p.prediction, vocabulary) for p in predictions]
    other = [any(part.strip() and not labels_in_text(part, vocabulary) for part in p.prediction.split(";")) for p in predictions]
    truth = np.array([[label in p.references for label in vocabulary] + [False] for p in predictions], dtype=int)
    predicted = np.array([[label in n for label in vocabulary] + [o] for n, o in zip(named, other)], dtype=int)
    if not any(other):  # no <other> column unless something landed in it
        truth, predicted = truth[:, :-1], predicted[:, :-1]
    with_positives = [j for j in range(len(vocabulary)) if truth[:, j].any()]
    aps = [average_precision_score(truth[:, j], predicted[:, j]) for j in with_positives]
    return {
        "n": len(predictions),
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "mAP": float(np.mean(aps)) if aps else None,
        "map_scores": "binary (the model names labels; it gives no per-class scores)",
        "classes": vocabulary,
        "predictions_naming_no_class": sum(1 for n in named if not n),
    }
