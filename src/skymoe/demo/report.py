"""The demo's one self-contained report (HTML + Markdown), assembled from the run's files.

Sources: ``demo_run.json`` (timings, data counts, training summaries),
``stage*/metrics.jsonl`` (loss curves), ``eval_stage*/metrics.json`` and
``predictions.jsonl`` (scores, routing, gallery), the saved models (parameter
counts), ``learning.json`` (learning controls). The tables and documents reuse :mod:`skymoe.eval.report`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from skymoe.data.schema import iter_json_objects
from skymoe.demo.splits import SYNTHETIC_DATASETS
from skymoe.eval.controls import LEARNING, learning_section
from skymoe.eval.records import Prediction, read_predictions
from skymoe.eval.report import Section, routing_sections, to_html, to_markdown

GALLERY_SIZE = 8
DEMO_TITLES = {"skymoe": "SkyMoE demo report", "rsmoe": "SkyMoE demo report: the RS-MoE recipe"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(out_dir: Path, path: Path) -> None:
    """Every ``loss/*`` term of both stages against the optimiser step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, stage in zip(axes, ("stage1", "stage2")):
        rows = [row for _, row in iter_json_objects(out_dir / stage / "metrics.jsonl")]
        terms = sorted({k for r in rows for k in r if k.startswith("loss/")})
        for term in terms:
            points = [(r["step"], r[term]) for r in rows if term in r]
            ax.plot(*zip(*points), label=term[len("loss/") :], linewidth=2 if term == "loss/total" else 1)
        ax.set_yscale("log")
        ax.set_xlabel("optimiser step")
        ax.set_title(f"{stage[:-1]} {stage[-1]}: loss terms")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def headline_bars(moe: dict, dense: dict, path: Path) -> None:
    """Overall accuracy per held-out set (and the real datasets pooled): MoE, dense and the prior side by side."""
    import numpy as np

    plt = _pyplot()
    groups = list(moe["model"]["question_answering"])
    series = {
        "MoE (stage 2)": [moe["model"]["question_answering"][g]["overall_accuracy"] for g in groups],
        "dense (stage 1)": [_dig(dense["model"], "question_answering", g, "overall_accuracy") for g in groups],
        "prior baseline": [_dig(moe.get("baseline", {}), "question_answering", g, "overall_accuracy") for g in groups],
    }
    for row in pooled_real_rows(moe, dense):  # [name, n, MoE, dense, prior, MoE - prior]
        groups.append(row[0])
        for label, value in zip(series, row[2:5]):
            series[label].append(value)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(groups)), 3.6))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - 1) * 0.27, [np.nan if v is None else v for v in values], 0.27, label=label)
    ax.set_xticks(x, groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("overall accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title("Held-out question answering")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _primary(node: dict | None) -> float | None:
    return None if not node else node.get("value")


def comparison_sections(moe: dict, dense: dict) -> list[Section]:
    """Question answering and per-question-type scores: MoE (stage 2) beside dense (stage 1) and the prior."""
    qa = Section(
        "Held-out question answering: overall accuracy (RSVQA definition)",
        ["dataset/held-out set", "n", "MoE (stage 2)", "dense (stage 1)", "prior baseline", "MoE − prior"],
    )
    for group, m in moe["model"]["question_answering"].items():
        base = moe["baseline"].get("question_answering", {}).get(group, {}).get("overall_accuracy")
        d = dense["model"]["question_answering"].get(group, {}).get("overall_accuracy")
        qa.rows.append([group, m["n"], m["overall_accuracy"], d, base, _delta(m["overall_accuracy"], base)])
    qa.rows += pooled_real_rows(moe, dense)
    qa.text = ("Rows 'all real/...' pool every real dataset's questions of one held-out set "
               "(accuracies weighted by n); MGRS-mini is synthetic and not pooled.")
    per_type = Section(
        "Per task and question type (primary metric)",
        ["dataset/held-out set", "task", "question type", "metric", "n", "MoE", "dense", "prior", "MoE − prior"],
    )
    for group, tasks in moe["model"]["by_question_type"].items():
        for task, types in tasks.items():
            for qt, v in types.items():
                path = (group, task, qt)
                base = _primary(_dig(moe.get("baseline", {}), "by_question_type", *path))
                d = _primary(_dig(dense["model"], "by_question_type", *path))
                per_type.rows.append([group, task, qt, v["metric"], v["n"], v["value"], d, base, _delta(v["value"], base)])
    return [qa, per_type]


def pooled_real_rows(moe: dict, dense: dict) -> list[list]:
    """One row per held-out set: the real datasets' questions pooled (n-weighted overall accuracy)."""
    sums: dict[str, list[float]] = {}  # held-out set -> [n, MoE, dense, prior] (accuracy * n sums)
    for group, m in moe["model"]["question_answering"].items():
        dataset, _, held_out = group.partition("/")
        d = _dig(dense["model"], "question_answering", group, "overall_accuracy")
        base = _dig(moe.get("baseline", {}), "question_answering", group, "overall_accuracy")
        if dataset in SYNTHETIC_DATASETS or d is None or base is None:
            continue
        total = sums.setdefault(held_out, [0, 0.0, 0.0, 0.0])
        for i, value in enumerate((1.0, m["overall_accuracy"], d, base)):
            total[i] += value * m["n"]
    rows = []
    for held_out, (n, *weighted) in sorted(sums.items()):
        moe_acc, dense_acc, prior = (w / n for w in weighted)
        rows.append([f"all real/{held_out}", int(n), moe_acc, dense_acc, prior, moe_acc - prior])
    return rows


def _dig(node, *keys):
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _delta(a, b):
    return None if a is None or b is None else a - b


def gallery(predictions: list[Prediction], path: Path) -> None:
    """Test images with question, prediction and ground truth; ground-truth boxes drawn."""
    from skymoe.data.imagery import load_image

    plt = _pyplot()
    picked, seen = [], set()
    for p in predictions:  # one per (dataset, task) first, then fill up
        key = (p.dataset, p.task)
        if key not in seen:
            seen.add(key)
            picked.append(p)
    picked += [p for p in predictions if p not in picked][: max(0, GALLERY_SIZE - len(picked))]
    picked = picked[:GALLERY_SIZE]
    cols = 4
    rows = (len(picked) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, p in zip(axes.flat, picked):
        ax.imshow(load_image(p.image))
        for x1, y1, x2, y2 in p.gt_boxes:
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.5))
        ok = "✓" if p.prediction.strip().lower() in [r.strip().lower() for r in p.references] else "✗"
        text = f"{p.dataset} · {p.task}\nQ: {p.question[:60]}\npred: {p.prediction[:40]} {ok}\ntrue: {' | '.join(p.references)[:40]}"
        ax.set_title(text, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cost_section(out_dir: Path, run: dict) -> Section:
    from skymoe.model.summary import summarize

    section = Section("Cost", ["what", "value"])
    for name, seconds in run["timings_s"].items():
        section.rows.append([f"wall time: {name} (s)", f"{seconds:.1f}"])
    for stage in ("stage1", "stage2"):
        s = run[stage]
        section.rows.append([f"{stage}: steps / samples/s / peak memory (MiB)", f"{s['steps']} / {s['samples_per_second']:.2f} / {s['peak_memory_mb']:.0f}"])
        summary = summarize(Path(s["model_dir"]))
        section.rows.append([f"{stage}: parameters total / trainable / active per token", f"{summary['total']:,} / {summary['trainable']:,} / {summary['active_per_token']:,}"])
    return section


def data_section(run: dict) -> Section:
    section = Section("Data (embedded real RS data + MGRS-mini)", ["dataset", "train", "unseen questions of seen images", "unseen images"])
    for name, counts in run["data"].items():
        section.rows.append([name, counts.get("train", 0), counts.get("unseen_questions", 0), counts.get("unseen_images", 0)])
    section.text = (
        "The embedded real datasets are tiny (RSVQA-LR: 12 images), so two held-out sets are reported separately: "
        "'unseen-images' (the datasets' own held-out splits, RSVQA-HR's Philadelphia test_phili included, whose images "
        "never appear in training; the real ones used whole, except in --smoke runs) and "
        "'unseen-questions' (a seeded 15% of the questions of training images, withheld from training). "
        "NEON trees (128 px chips of four airborne scenes) and Landsat land cover (8 px patches of one scene) have no "
        "splits of their own: their chips are split by blocks of the scene, and no held-out chip overlaps a training chip. "
        "The prior baseline answers the most frequent training answer per dataset and question type."
    )
    if run.get("heldout") == "val":
        section.text += (" This run held out the VALIDATION splits (--heldout val, for tuning a recipe): "
                         "'unseen-images' are validation images here, and no test split was read.")
    return section


def write_demo_report(out_dir: Path, run: dict) -> Path:
    moe = json.loads((out_dir / "eval_stage2" / "metrics.json").read_text(encoding="utf-8"))
    dense = json.loads((out_dir / "eval_stage1" / "metrics.json").read_text(encoding="utf-8"))
    loss_curves(out_dir, out_dir / "loss_curves.png")
    headline_bars(moe, dense, out_dir / "headline.png")
    gallery(read_predictions(out_dir / "eval_stage2" / "predictions.jsonl"), out_dir / "gallery.png")
    routing = routing_sections(moe, out_dir / "eval_stage2")
    for section in routing:  # the heatmap was drawn into the eval folder; the report folder must hold it
        if section.image:
            shutil.copy(out_dir / "eval_stage2" / section.image, out_dir / section.image)
    title = DEMO_TITLES[run.get("recipe", "skymoe")]
    sections = [
        data_section(run),
        learning_section(json.loads((out_dir / LEARNING).read_text(encoding="utf-8"))),
        Section("Held-out question answering at a glance", image="headline.png"),
        *comparison_sections(moe, dense),
        Section("Loss curves", image="loss_curves.png"),
        *routing,
        Section("Gallery (MoE model on held-out samples; ground-truth boxes in green)", image="gallery.png"),
        cost_section(out_dir, run),
    ]
    (out_dir / "report.md").write_text(to_markdown(sections, title) + "\n", encoding="utf-8")
    (out_dir / "report.html").write_text(to_html(sections, out_dir, title) + "\n", encoding="utf-8")
    return out_dir / "report.html"
