"""Matplotlib figures for the evaluation report (Agg backend, PNG files)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def routing_heatmap(routing: dict, path: Path) -> None:
    """Mean gate weight per (task | granularity) x (layer, expert)."""
    plt = _pyplot()
    loads = routing["expert_load"]
    layers, experts = routing["num_layers"], routing["num_experts"]
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.35 * layers * experts + 2), 2 + 0.45 * (len(loads["task"]) + len(loads["granularity"]))))
    for ax, key in zip(axes, ("task", "granularity")):
        names = list(loads[key])
        matrix = np.asarray([np.asarray(loads[key][n]).reshape(-1) for n in names])
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0, vmax=max(float(matrix.max()), 1e-9))
        ax.set_yticks(range(len(names)), names)
        ax.set_xticks(range(layers * experts), [f"L{l}E{e}" for l in range(layers) for e in range(experts)], rotation=90, fontsize=7)
        ax.set_title(f"expert load by {key}")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def question_type_bars(metrics: dict, path: Path) -> None:
    """Primary metric per (dataset/split, task, question type): model beside baseline."""
    plt = _pyplot()
    labels, model, baseline = [], [], []
    base_root = metrics.get("baseline", {}).get("by_question_type", {})
    for group, tasks in metrics["model"]["by_question_type"].items():
        for task, types in tasks.items():
            for qt, v in types.items():
                labels.append(f"{group}\n{task}: {qt}")
                model.append(v["value"])
                base = base_root.get(group, {}).get(task, {}).get(qt)
                baseline.append(base["value"] if base else np.nan)
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels)), 4))
    ax.bar(x - 0.2, model, 0.4, label="model")
    ax.bar(x + 0.2, baseline, 0.4, label="prior baseline")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("primary metric")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
