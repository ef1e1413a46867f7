"""Stage-2 / stage-1 training throughput (samples/s) with the same model size, data and batch.

Runs stage 1 for --steps steps, then stage 2 from it for --steps steps, and
reports the steady-state samples/s of each (median of the logged windows after
the first, which holds start-up and warm-up costs) and their ratio. CDA view
rows and MoE routing are part of stage 2's cost; "samples" counts real training
samples only.

    python benchmarks/train_throughput.py --out out/bench_train \
        [--stage1 configs/stage1_tiny.yaml] [--stage2 configs/stage2_tiny.yaml] [--steps 200] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _machine import machine


def steady_samples_per_s(output_dir: Path) -> float:
    windows = [json.loads(line)["samples_per_s"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(windows[1:] if len(windows) > 1 else windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage1", default="configs/stage1_tiny.yaml")
    parser.add_argument("--stage2", default="configs/stage2_tiny.yaml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", default="out/bench_train")
    parser.add_argument("--results", default="benchmarks/results/train_throughput.md", help="markdown table to write")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to both stages")
    args = parser.parse_args()

    from skymoe.config import load_config
    from skymoe.train import train

    out = Path(args.out)
    common = [f"max_steps={args.steps}", f"log_every={max(1, args.steps // 6)}", f"checkpoint_every={args.steps}", *args.overrides]
    s1 = train(load_config(args.stage1, common), out / "stage1")
    s2 = train(load_config(args.stage2, [*common, f"model.init_from={out / 'stage1'}"]), out / "stage2")
    rate1, rate2 = steady_samples_per_s(out / "stage1"), steady_samples_per_s(out / "stage2")
    result = {
        "machine": machine(),
        "stage1_config": args.stage1,
        "stage2_config": args.stage2,
        "steps": args.steps,
        "overrides": args.overrides,
        "stage1_samples_per_s": round(rate1, 2),
        "stage2_samples_per_s": round(rate2, 2),
        "ratio_stage2_over_stage1": round(rate2 / rate1, 3),
        "stage1_peak_memory_mb": round(s1.peak_memory_mb),
        "stage2_peak_memory_mb": round(s2.peak_memory_mb),
    }
    print(json.dumps(result, indent=2))
    (out / "train_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(args.results).write_text(markdown(result, s1, s2))


def markdown(result: dict, s1, s2) -> str:
    rows = [
        ("stage 1 (dense; projector + router + LLM trained)", result["stage1_samples_per_s"], result["stage1_peak_memory_mb"], s1),
        ("stage 2 (MoE + router + CDA views)", result["stage2_samples_per_s"], result["stage2_peak_memory_mb"], s2),
    ]
    lines = [
        "# Training throughput: stage 2 / stage 1 (`benchmarks/train_throughput.py`)",
        "",
        f"Machine: {result['machine']}.",
        f"Configs: `{result['stage1_config']}` then `{result['stage2_config']}`, {result['steps']} steps each"
        + (f", overrides {result['overrides']}" if result["overrides"] else "")
        + "; samples/s = median of the logged windows after the first (real samples; CDA view rows are cost, not samples).",
        "",
        "| stage | samples/s | peak memory (MiB) | total loss, first -> last logged window |",
        "|---|---|---|---|",
    ]
    for name, rate, memory, run in rows:
        lines.append(f"| {name} | {rate} | {memory} | {run.first_loss:.3f} -> {run.final_loss:.3f} |")
    lines += [
        "",
        f"**Ratio stage 2 / stage 1: {result['ratio_stage2_over_stage1']}** (target >= 0.8).",
        "",
        "The CPU is shared with other jobs, so absolute numbers move between runs (see the load average above).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
