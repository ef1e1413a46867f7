"""A demo run's record for ``benchmarks/results``: its learning table and MGRS-mini's answers by kind.

    python benchmarks/demo_record.py OUT_DIR --note "what this run changed" --out FILE

Writes the note (an HTML comment), the run's ``learning.md`` as the demo wrote it, then the share of
exactly right answers of MGRS-mini's VQA, counting and region captions per question type and
granularity (region captions: one object's, or a region's) for the prior (the baseline each
prediction carries), the blind control (``eval_blind``), dense stage 1 (``eval_stage1``) and the MoE
(``eval_stage2``). Right means what the VQA scorer counts as right
(:func:`skymoe.eval.scorers.text.answers_match` with any reference); region captions' primary metric
stays CIDEr, in the learning table. Last, the MoE's routing on the held-out prompts (``eval_stage2``'s
``metrics.json``): the router's task and granularity accuracy per class, with their macro averages, and
I(class; expert) / H(class), the expert specialisation.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

RUNS = {"prior": "eval_stage2", "blind": "eval_blind", "dense": "eval_stage1", "MoE": "eval_stage2"}
TASKS = ("vqa", "counting", "region_caption")


def predictions(out: Path, folder: str) -> dict[str, dict]:
    with (out / folder / "predictions.jsonl").open(encoding="utf-8") as lines:
        return {row["id"]: row for row in map(json.loads, lines)}


def kinds_table(out: Path) -> list[str]:
    from skymoe.eval.scorers.text import answers_match

    runs = {label: predictions(out, folder) for label, folder in RUNS.items()}
    groups = defaultdict(list)
    for sample_id, row in runs["MoE"].items():
        if row["dataset"] == "mgrs_mini" and row["task"] in TASKS:
            groups[(row["task"], row["question_type"], row["granularity"])].append(sample_id)

    def right(label: str, sample_id: str) -> bool:
        row = runs[label][sample_id]
        answer = row["baseline"] if label == "prior" else row["prediction"]
        return any(answers_match(answer, reference) for reference in runs["MoE"][sample_id]["references"])

    lines = ["| task | question type | granularity | n | " + " | ".join(RUNS) + " |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in RUNS) + " |"]
    for (task, kind, granularity), ids in sorted(groups.items()):
        shares = [sum(right(label, i) for i in ids) / len(ids) for label in RUNS]
        lines.append(f"| {task} | {kind} | {granularity} | {len(ids)} | " + " | ".join(f"{v:.2f}" for v in shares) + " |")
    return lines


def routing_lines(out: Path) -> list[str]:
    routing = json.loads((out / "eval_stage2" / "metrics.json").read_text(encoding="utf-8")).get("routing") or {}
    if routing.get("status") != "ok":
        return ["No routing read-out in `eval_stage2/metrics.json`."]
    lines = ["| labels | router accuracy, macro | per class | I(class; expert) / H(class) |", "| --- | --- | --- | --- |"]
    for labels in ("task", "granularity"):
        accuracy, specialisation = routing["router_accuracy"][labels], routing["specialisation"][labels]
        per_class = ", ".join(f"{name} {value:.4f}" for name, value in accuracy["per_class"].items())
        lines.append(f"| {labels} | {accuracy['macro']:.4f} | {per_class} | {specialisation['normalized']:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="a `skymoe demo --out` folder")
    parser.add_argument("--note", required=True, help="what this run changed (its first line)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    table = kinds_table(args.out_dir)
    lines = [f"<!-- {args.note} -->", (args.out_dir / "learning.md").read_text(encoding="utf-8").rstrip(), "",
             "## MGRS-mini answers by kind", "",
             "Share of exactly right answers (`benchmarks/demo_record.py`: as the VQA scorer matches answers); "
             "prior = the baseline each prediction carries.", "", *table, "", "## Routing (MoE, held-out prompts)", "",
             *routing_lines(args.out_dir)]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(table))


if __name__ == "__main__":
    main()
