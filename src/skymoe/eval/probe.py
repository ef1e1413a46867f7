"""The probe ceiling: linear probes on the frozen tower's features, beside the model's numbers.

A linear probe reads the same frozen features the VLM reads, with no language
model in between, so the distance between a model and its probe says how much
of what the tower sees the model uses. Probes exist where a fixed label set
makes one possible:

* **classification**: one classifier on the flattened visual tokens [N x C],
  over the training answers;
* **multilabel**: one output per label, a label named when its output passes
  the midpoint;
* **counting** (the counting task; VQA's count questions are not probed, since
  the table reports VQA as one task): the answer is a count of something
  somewhere, so a probe is fitted per *query* (the question with its place
  removed: "how many ships are there?") on the features of the place only: each
  token is weighted by the share of its grid cell inside the question's box or
  quadrant (all tokens when it names neither); a numeric count is regressed
  and rounded.

The probes are ridge classifiers (least squares on one-hot / multilabel targets)
on features standardised on the training samples. The L2 strength is chosen
from :data:`ALPHAS` by exact leave-one-out squared error on the training samples, which
ridge gets from one eigendecomposition of the [n x n] Gram matrix for every
strength and every label at once: a multinomial logistic regression per
strength and label took minutes on the demo's flattened features, the ridge
probe seconds (within 0.02 of it on MGRS-mini scene classes, 250 unseen
scenes). A query with fewer than :data:`MIN_QUERY_SAMPLES` training samples, or
with one answer only, answers its most frequent training answer.
scikit-learn does the fitting.
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable

import numpy as np

from skymoe.data.schema import Sample, Task
from skymoe.eval.records import Prediction

ALPHAS = tuple(np.logspace(-1, 6, 15))
MIN_QUERY_SAMPLES = 10
PROBE_TASKS = ("classification", "multilabel", "counting")
_QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
_PLACE = re.compile(r"\s*(?:in|of)?\s*(?:the region \[[^\]]*\]|the (?:top|bottom) (?:left|right) quadrant|the image)\s*", re.IGNORECASE)
_BOX = re.compile(r"\[\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\]")


def probe_kind(sample: Sample) -> str | None:
    """Which probe answers ``sample`` (None: none applies)."""
    if sample.task == Task.CLASSIFICATION:
        return "classification"
    if sample.task == Task.MULTILABEL:
        return "multilabel"
    if sample.task == Task.COUNTING:
        return "counting"
    return None


def place_mask(question: str, grid: int) -> np.ndarray:
    """[grid*grid] the share of each visual token's grid cell inside the place the question names (all 1 when none)."""
    box = _BOX.search(question)
    lowered = question.lower()
    if box:
        x1, y1, x2, y2 = (int(v) for v in box.groups())
    elif any(q in lowered for q in _QUADRANTS):
        index = next(i for i, q in enumerate(_QUADRANTS) if q in lowered)
        x1, y1 = 50 * (index % 2), 50 * (index // 2)
        x2, y2 = x1 + 50, y1 + 50
    else:
        return np.ones(grid * grid)
    edges = np.arange(grid + 1) * 100 / grid
    inside_x = np.clip(np.minimum(edges[1:], x2) - np.maximum(edges[:-1], x1), 0, None) * grid / 100
    inside_y = np.clip(np.minimum(edges[1:], y2) - np.maximum(edges[:-1], y1), 0, None) * grid / 100
    return np.outer(inside_y, inside_x).ravel()  # raster order: rows are y


def query_key(sample: Sample) -> str:
    """The question without its place: samples of one key ask the same thing of different places."""
    return " ".join(_PLACE.sub(" ", sample.question.lower()).split())


def probe_predictions(train: list[Sample], test: list[Sample], features: Callable[[list[Sample]], np.ndarray]) -> list[Prediction]:
    """Probe answers for the ``test`` samples a probe applies to (fitted on the ``train`` samples of the
    same dataset and probe kind); ``features(samples) -> [n, N, C]`` reads the frozen tower."""
    groups: dict[tuple[str, str], tuple[list[Sample], list[Sample]]] = defaultdict(lambda: ([], []))
    for sample in train:
        if (kind := probe_kind(sample)) is not None:
            groups[(sample.dataset, kind)][0].append(sample)
    for sample in test:
        if (kind := probe_kind(sample)) is not None:
            groups[(sample.dataset, kind)][1].append(sample)
    out = []
    for (_, kind), (fit_on, apply_to) in sorted(groups.items()):
        if not apply_to or not fit_on:
            continue
        answers = _FITTERS[kind](fit_on, apply_to, features)
        out += [Prediction.from_sample(s, a) for s, a in zip(apply_to, answers)]
    return out


def _flat(features: np.ndarray) -> np.ndarray:
    return features.reshape(len(features), -1)


def _fit(x: np.ndarray, y):
    """A standardise + ridge-classifier pipeline fitted on ``x``, its strength chosen by leave-one-out."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=ALPHAS)).fit(x, y)


def _classification(train, test, features) -> list[str]:
    labels = [s.answer for s in train]
    if len(set(labels)) < 2:
        return [labels[0]] * len(test)
    return [str(a) for a in _fit(_flat(features(train)), labels).predict(_flat(features(test)))]


def _multilabel(train, test, features) -> list[str]:
    vocabulary = sorted({label for s in train for label in (s.meta.get("labels") or [])})
    present = np.array([[label in (s.meta.get("labels") or []) for label in vocabulary] for s in train], dtype=int)
    varying = present.min(0) != present.max(0)  # a label on every (or no) training image is always (never) named
    hits = np.tile(present[:1], (len(test), 1))
    if varying.any():
        targets = present[:, varying]
        targets = targets.ravel() if targets.shape[1] == 1 else targets  # one label: a plain binary problem
        hits[:, varying] = _fit(_flat(features(train)), targets).predict(_flat(features(test))).reshape(len(test), -1)
    return ["; ".join(label for label, hit in zip(vocabulary, row) if hit) for row in hits]


def _counting(train, test, features) -> list[str]:
    by_key: dict[str, list[Sample]] = defaultdict(list)
    for s in train:
        by_key[query_key(s)].append(s)
    fallback = Counter(s.answer for s in train).most_common(1)[0][0]
    answers: dict[int, str] = {}
    test_by_key: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(test):
        test_by_key[query_key(s)].append(i)
    for key, indices in test_by_key.items():
        fit_on = by_key.get(key, [])
        labels = [s.answer for s in fit_on]
        if len(fit_on) < MIN_QUERY_SAMPLES or len(set(labels)) < 2:
            common = Counter(labels).most_common(1)[0][0] if labels else fallback
            answers.update((i, common) for i in indices)
            continue
        apply_to = [test[i] for i in indices]
        answers.update(zip(indices, _count_probe(_masked(fit_on, features), labels, _masked(apply_to, features))))
    return [answers[i] for i in range(len(test))]


def _count_probe(x: np.ndarray, labels: list[str], x_test: np.ndarray) -> list[str]:
    """Numeric counts: ridge regression, rounded into the training range (a count is ordered; one-vs-rest
    classes are not, and cannot name a middle count from one feature). Other answers: the classifier."""
    try:
        counts = np.array([int(label) for label in labels], dtype=np.float64)
    except ValueError:
        return [str(a) for a in _fit(x, labels).predict(x_test)]
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    predicted = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS)).fit(x, counts).predict(x_test)
    return [str(int(v)) for v in np.clip(np.rint(predicted), counts.min(), counts.max())]


def _masked(samples: list[Sample], features) -> np.ndarray:
    values = features(samples)  # [n, N, C]
    grid = int(round(np.sqrt(values.shape[1])))
    masks = np.stack([place_mask(s.question, grid) for s in samples])[:, :, None]
    return _flat(values * masks)


_FITTERS = {"classification": _classification, "multilabel": _multilabel, "counting": _counting}
