"""Learning controls: does a model use what the images show?

A score means something only beside what needs no image. For every dataset and
task of the held-out set, ``learning.json`` gives, in the task's primary metric:

* ``prior``: the most-frequent-answer / nearest-caption / mean-box baseline
  (:mod:`skymoe.eval.baselines`), fitted on the training split;
* ``blind``: the same model recipe trained and evaluated with every image
  replaced by one constant image: what the text alone gives;
* ``probe``: a linear probe on the frozen tower's features, where one applies
  (:mod:`skymoe.eval.probe`): the ceiling of what the features hold, read linearly;
* ``dense`` (stage 1) and ``moe`` (stage 2);
* ``n`` and ``ci95``: the 95% paired-bootstrap interval of
  ``moe - max(prior, blind)`` (samples resampled with replacement, the same
  resample for every model; :data:`BOOTSTRAP` resamples). ``ci95[0] > 0`` is
  "the model beats both controls" at that confidence.

Models are joined on (dataset, split, id); every record carries its prior answer.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from skymoe.eval.aggregate import scorer_of
from skymoe.eval.records import Prediction
from skymoe.eval.samplewise import SampleStats, stats_of

BOOTSTRAP = 1000
MODELS = ("blind", "dense", "moe")
LEARNING = "learning.json"


def _key(p: Prediction) -> tuple[str, str, str]:
    return (p.dataset, p.split, p.id)


def learning_controls(models: dict[str, list[Prediction]], probe: list[Prediction] | None = None, *,
                      split: str | None = None, seed: int = 0) -> dict:
    """{dataset: {task: {metric, n, prior, blind, probe, dense, moe, ci95}}} on the records of ``split`` (None: all).

    ``models`` maps names of :data:`MODELS` to their predictions of the same samples; ``moe`` is required
    (its records' baseline answers give the prior).
    """
    reference = [p for p in models["moe"] if split is None or p.split == split]
    by_model = {name: {_key(p): p for p in preds} for name, preds in models.items()}
    probe_by_key = {_key(p): p for p in probe or []}
    groups: dict[tuple[str, str], list[Prediction]] = defaultdict(list)
    for p in reference:
        groups[(p.dataset, p.task)].append(p)
    out: dict[str, dict] = {}
    for (dataset, task), records in sorted(groups.items()):
        out.setdefault(dataset, {})[task] = _controls(records, by_model, probe_by_key, seed)
    return out


def _controls(records: list[Prediction], by_model: dict, probe_by_key: dict, seed: int) -> dict:
    scorer = scorer_of(records)
    keys = [_key(p) for p in records]
    stats: dict[str, SampleStats | None] = {}
    stats["prior"] = (stats_of(scorer.name, [replace(p, prediction=p.baseline) for p in records])
                      if all(p.baseline is not None for p in records) else None)
    for name in MODELS:
        table = by_model.get(name)
        stats[name] = stats_of(scorer.name, [table[k] for k in keys]) if table and all(k in table for k in keys) else None
    stats["probe"] = (stats_of(scorer.name, [probe_by_key[k] for k in keys])
                      if probe_by_key and all(k in probe_by_key for k in keys) else None)
    result = {"metric": scorer.primary, "n": len(records)}
    result.update({name: (s.metric() if s is not None else None) for name, s in
                   (("prior", stats["prior"]), ("blind", stats["blind"]), ("probe", stats["probe"]),
                    ("dense", stats["dense"]), ("moe", stats["moe"]))})
    result["ci95"] = _interval(stats["moe"], [stats["prior"], stats["blind"]], seed)
    return result


def _interval(model: SampleStats | None, controls: list[SampleStats | None], seed: int) -> list[float] | None:
    """Paired bootstrap 95% interval of ``model - max(controls)``."""
    controls = [c for c in controls if c is not None]
    if model is None or not controls:
        return None
    n = len(model.values)
    draws = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP, n))
    weights = np.stack([np.bincount(row, minlength=n) for row in draws]).astype(np.float64)  # [B, n] times drawn

    def resampled(stats: SampleStats) -> np.ndarray:
        return stats.reduce(weights @ stats.values)

    diff = resampled(model) - np.max(np.stack([resampled(c) for c in controls]), axis=0)
    low, high = np.percentile(diff, [2.5, 97.5])
    return [float(low), float(high)]


def write_learning(learning: dict, out_dir: str | Path) -> Path:
    """``learning.json``, its plot ``learning.png`` and its table ``learning.md`` in ``out_dir``."""
    from skymoe.eval.report import to_markdown

    out_dir = Path(out_dir)
    path = out_dir / LEARNING
    path.write_text(json.dumps(learning, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    learning_plot(learning, out_dir / "learning.png")
    (out_dir / "learning.md").write_text(to_markdown([learning_section(learning)], "Learning controls") + "\n", encoding="utf-8")
    return path


LEARNING_HEADER = ["dataset", "task", "metric", "n", "prior", "blind", "probe", "dense", "MoE", "MoE - max(prior, blind)", "95% CI"]


def learning_rows(learning: dict) -> list[list]:
    """Table rows under :data:`LEARNING_HEADER`."""
    rows = []
    for dataset, tasks in learning.items():
        for task, c in tasks.items():
            floor = max((v for v in (c["prior"], c["blind"]) if v is not None), default=None)
            delta = None if c["moe"] is None or floor is None else c["moe"] - floor
            ci = None if c["ci95"] is None else f"[{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
            rows.append([dataset, task, c["metric"], c["n"], c["prior"], c["blind"], c["probe"], c["dense"], c["moe"], delta, ci])
    return rows


def learning_section(learning: dict, image: str | None = "learning.png"):
    """The report section: the table, how to read it, and the plot."""
    from skymoe.eval.report import Section

    return Section(
        "Learning controls (does the model use the image?)", LEARNING_HEADER, learning_rows(learning),
        text="Held-out samples of unseen images, in each task's primary metric. prior: most frequent training answer; "
             "blind: the stage-1 recipe trained and evaluated with a constant image; probe: a linear probe on the frozen "
             "tower's features (where a fixed label set allows one); dense: stage 1; MoE: stage 2. The interval is a "
             f"paired bootstrap ({BOOTSTRAP} resamples) of MoE - max(prior, blind): above 0 means the model beats both.",
        image=image,
    )


def learning_plot(learning: dict, path: str | Path) -> None:
    """One panel per dataset: per task, prior / blind / probe / dense / MoE bars, the MoE bar marked with
    whether its CI clears both controls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("prior", "blind", "probe", "dense", "moe")
    panels = [1.5 + 0.9 * len(tasks) for tasks in learning.values()]  # inches: a margin + a bar group per task
    fig, axes = plt.subplots(1, len(learning), figsize=(max(5.0, sum(panels)), 3.8), squeeze=False,
                             gridspec_kw={"width_ratios": panels})
    for ax, (dataset, tasks) in zip(axes[0], learning.items()):
        x = np.arange(len(tasks))
        for i, name in enumerate(names):
            values = [np.nan if tasks[t][name] is None else tasks[t][name] for t in tasks]
            ax.bar(x + (i - 2) * 0.16, values, 0.16, label=name)
        for j, t in enumerate(tasks):
            ci = tasks[t]["ci95"]
            if ci is not None and tasks[t]["moe"] is not None:
                ax.text(j + 0.32, tasks[t]["moe"], "✓" if ci[0] > 0 else "✗", fontsize=9, va="bottom")
        ax.set_xticks(x, [f"{t}\n({tasks[t]['metric']})" for t in tasks], fontsize=7)
        ax.set_title(dataset, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Learning controls on unseen images (✓: MoE above prior and blind, 95% CI)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
