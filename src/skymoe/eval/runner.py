"""``evaluate`` (model + suite -> predictions, metrics, report) and ``score`` (predictions -> metrics, report)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from skymoe.data.schema import iter_json_objects, read_jsonl
from skymoe.errors import ConfigError, DataError
from skymoe.eval.aggregate import compute_metrics, dumps_metrics
from skymoe.eval.records import Prediction, prediction_text, read_predictions, write_predictions
from skymoe.eval.suite import Suite, load_suite

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
RUN_INFO = "run.json"


def collect_samples(suite: Suite, limit: int | None = None) -> list:
    """The suite's evaluation samples; ``limit`` caps every dataset split (on top of the suite's own limit)."""
    from skymoe.data.datasets import load_dataset

    samples = []
    for entry in suite.datasets:
        caps = [c for c in (entry.limit, limit) if c is not None]
        cap = min(caps) if caps else None
        if entry.path is not None:
            samples += list(read_jsonl(entry.path))[:cap]
        for split in entry.splits:
            samples += load_dataset(entry.name, split)[:cap]
    if not samples:
        raise ConfigError(f"suite {suite.name!r} selects no samples")
    return samples


def baseline_samples(suite: Suite) -> list | None:
    """The training samples the prior baseline and the probes are fitted on (None: the suite names none)."""
    from skymoe.data.datasets import dataset_splits, load_dataset

    if suite.baseline_path is not None:
        return list(read_jsonl(suite.baseline_path))
    if suite.baseline_split is None:
        return None
    return [
        s
        for e in suite.datasets
        if e.name is not None and suite.baseline_split in dataset_splits(e.name)
        for s in load_dataset(e.name, suite.baseline_split)
    ]


def fit_baseline(suite: Suite):
    """The prior/nearest-neighbour baseline fitted on the suite's baseline samples."""
    from skymoe.eval.baselines import Baseline

    train = baseline_samples(suite)
    return None if train is None else Baseline(train)


def evaluate(model_dir: str | Path, suite: str | Path | Suite, out_dir: str | Path, *, limit: int | None = None,
             batch_size: int | None = None, controls: dict[str, str | Path] | None = None, probe: bool = False,
             learning_split: str | None = None) -> dict:
    """Generate predictions for a suite with a saved model, then score them (see :func:`score`).

    With ``controls`` (``{"blind": dir, "dense": dir}``: other saved models evaluated on the same samples)
    and/or ``probe`` (linear probes on the model's frozen tower, fitted on the baseline samples), also
    writes ``learning.json`` (:mod:`skymoe.eval.controls`), on the records of ``learning_split`` (None: all).
    """
    from skymoe.eval.predict import generate_predictions
    from skymoe.model.feature_source import feature_source
    from skymoe.model.inference import load_model

    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    out_dir = Path(out_dir)
    samples = collect_samples(suite, limit)
    baseline = fit_baseline(suite)
    model, processor = load_model(model_dir)
    source = feature_source(model, processor)
    start = time.perf_counter()
    predictions = generate_predictions(model, processor, samples, suite, batch_size, source)
    seconds = time.perf_counter() - start
    for sample, prediction in zip(samples, predictions):
        prediction.baseline = baseline.predict(sample) if baseline else None
    write_predictions(predictions, out_dir / PREDICTIONS)
    run_info = {
        "model": str(model_dir),
        "suite": suite.name,
        "samples": len(samples),
        "seconds": seconds,
        "samples_per_second": len(samples) / seconds if seconds > 0 else None,
    }
    (out_dir / RUN_INFO).write_text(json.dumps(run_info, indent=2) + "\n", encoding="utf-8")
    metrics = score(out_dir / PREDICTIONS, out_dir)
    if controls or probe:
        _learning(predictions, samples, suite, out_dir, controls or {}, source if probe else None, batch_size, learning_split)
    return metrics


def _learning(predictions, samples, suite: Suite, out_dir: Path, controls: dict, probe_source, batch_size, split) -> None:
    """Evaluate the control models on the same samples, fit the probes, write learning.json (+ plot and table)."""
    from skymoe.eval.controls import learning_controls, write_learning
    from skymoe.eval.predict import generate_predictions
    from skymoe.model.inference import load_model

    models = {"moe": predictions}
    for name, directory in controls.items():
        model, processor = load_model(directory)
        models[name] = generate_predictions(model, processor, samples, suite, batch_size)
        write_predictions(models[name], out_dir / f"predictions_{name}.jsonl")
    probed = None
    train = baseline_samples(suite)
    if probe_source is not None and train:
        probed = probe_records(train, samples, probe_source)
        write_predictions(probed, out_dir / "predictions_probe.jsonl")
    learning = learning_controls(models, probed, split=split)
    write_learning(learning, out_dir)


def probe_records(train: list, test: list, source) -> list[Prediction]:
    """Linear-probe answers for ``test`` from the frozen tower features that ``source`` (a feature cache) reads.

    A sample whose image cannot be read is left out of the probe's fit (or answers) and counted in one warning:
    training may have skipped it under ``data.on_error: skip``, and a probe must not crash the report on it."""
    import numpy as np

    from skymoe.eval.probe import probe_kind, probe_predictions

    if getattr(source, "batch_key", None) != "vision_features":
        raise ValueError("the probes read the frozen tower's cached features; this model's tower was trained "
                         "(freeze_vision: false), so no probe applies to it: drop --probe")
    train, test = ([s for s in samples if probe_kind(s) is not None] for samples in (train, test))
    by_image, unreadable = _read_features({s.image for s in train + test}, source)
    if unreadable:
        logger.warning("probes: %d unreadable image(s) left out (first: %s)", len(unreadable), next(iter(unreadable)))
    train, test = ([s for s in samples if s.image in by_image] for samples in (train, test))
    return probe_predictions(train, test, lambda samples: np.stack([by_image[s.image] for s in samples]))


def _read_features(images: set[str], source, chunk: int = 64):
    """{image: features} of every readable image (read once: the probes use an image many times), and the rest."""
    from skymoe.data.feature_cache import image_request
    from skymoe.data.imagery import load_image

    by_image, unreadable = {}, {}
    ordered = sorted(images)
    for start in range(0, len(ordered), chunk):
        part = ordered[start : start + chunk]
        try:
            entries = source.get([image_request(image, load_image) for image in part])
        except Exception:  # one bad file in the chunk: read its images one by one to find it
            entries = []
            for image in part:
                try:
                    entries += source.get([image_request(image, load_image)])
                except Exception as exc:
                    unreadable[image] = str(exc).splitlines()[0][:200]
                    entries.append(None)
        by_image.update((image, e.tensor.float().numpy()) for image, e in zip(part, entries) if e is not None)
    return by_image, unreadable


def join_references(predictions_path: str | Path, references_path: str | Path) -> list[Prediction]:
    """Records from bare ``{"id", "prediction"}`` lines joined by id with reference samples (schema JSONL).

    Ids are unique within a dataset split, so a references file that mixes splits is joined on
    ``dataset/split/id`` when the prediction lines carry ``dataset`` and ``split``; an id that names
    two reference samples without them, and an id given twice, are errors (never a silent pick).
    """
    samples = list(read_jsonl(references_path))
    by_id: dict[str, list] = {}
    for s in samples:
        by_id.setdefault(s.id, []).append(s)
    answers = {}
    for lineno, d in iter_json_objects(predictions_path):
        if "id" not in d:
            raise DataError('expected {"id": ..., "prediction": ...}', file=str(predictions_path), record=f"line {lineno}", field="id")
        key = _reference_key(d, by_id, predictions_path, lineno)
        if key in answers:
            raise DataError("duplicate prediction", file=str(predictions_path), record=f"line {lineno}: {_key_text(key)}", field="id")
        answers[key] = d.get("prediction")
    keys = {(s.dataset, s.split, s.id): s for s in samples}
    unknown, missing = sorted(set(answers) - set(keys)), sorted(set(keys) - set(answers))
    if unknown or missing:
        raise DataError(
            f"ids do not match the references {references_path}: {len(unknown)} unknown (e.g. {[_key_text(k) for k in unknown[:5]]}), "
            f"{len(missing)} without a prediction (e.g. {[_key_text(k) for k in missing[:5]]})", file=str(predictions_path), field="id")
    return [Prediction.from_sample(s, prediction_text(answers[key])) for key, s in keys.items()]


def _reference_key(line: dict, by_id: dict, predictions_path, lineno: int) -> tuple[str, str, str]:
    """(dataset, split, id) of a prediction line: from the line, or from the one reference sample with its id."""
    record_id = str(line["id"])
    if "dataset" in line and "split" in line:
        return str(line["dataset"]), str(line["split"]), record_id
    candidates = by_id.get(record_id, [])
    if len(candidates) > 1:
        groups = sorted(f"{s.dataset}/{s.split}" for s in candidates)
        raise DataError(f"id {record_id!r} is in several reference splits ({', '.join(groups)}): give \"dataset\" and \"split\" too",
                              file=str(predictions_path), record=f"line {lineno}", field="id")
    sample = candidates[0] if candidates else None
    return (sample.dataset, sample.split, record_id) if sample else ("", "", record_id)


def _key_text(key: tuple[str, str, str]) -> str:
    return "/".join(key) if key[0] else key[2]


def score(predictions_path: str | Path, out_dir: str | Path, *, references: str | Path | None = None) -> dict:
    """Score saved predictions: writes ``metrics.json``, ``report.md``, ``report.html`` (+ plots) to ``out_dir``."""
    from skymoe.eval.report import write_report

    predictions = join_references(predictions_path, references) if references else read_predictions(predictions_path)
    metrics = compute_metrics(predictions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS).write_text(dumps_metrics(metrics), encoding="utf-8")
    write_report(metrics, predictions, out_dir)
    return metrics
