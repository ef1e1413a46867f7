"""Dynamic int8 quantisation of the LLM linears on CPU: generation speed-up and the change in scores.

    python benchmarks/int8.py [--model DIR --suite embedded --limit 40] [--out benchmarks/results/int8.md]

Speed: the upcycled MoE of ``benchmarks/generate.py`` (8 LoRA experts, top-2), float32
vs ``skymoe.model.quantize.quantize_int8`` (what ``Pipeline`` uses), same inputs, one run. Scores: with ``--model``
(a trained SkyMoE directory) the suite is predicted with both versions and scored
with ``skymoe.eval``; the table shows each task's primary metric.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from _machine import machine
from generate import build_models, make_inputs, time_rounds


def speed_rows(new_tokens: int, repeats: int, batch_sizes: list[int]) -> list[str]:
    from skymoe.model.quantize import quantize_int8

    moe = build_models("tiny")["MoE 8 lora experts, top-2"]
    int8 = quantize_int8(copy.deepcopy(moe))
    rows = []
    for batch_size in batch_sizes:
        inputs = make_inputs(moe.config, batch_size)
        speeds = time_rounds({"float32": moe, "int8": int8}, inputs, new_tokens, repeats)
        fp32, q8 = speeds.tokens_per_second("float32"), speeds.tokens_per_second("int8")
        with torch.inference_mode():
            a, b = moe(**inputs).logits[:, -1], int8(**inputs).logits[:, -1]
        agree = float((a.argmax(-1) == b.argmax(-1)).float().mean())
        rows.append(f"| {batch_size} | {fp32:,.0f} | {q8:,.0f} | {speeds.ratio('int8', 'float32'):.2f}x | {agree:.0%} |")
        print(rows[-1], flush=True)
    return rows


def score_rows(model_dir: str, suite_name: str, limit: int) -> list[str]:
    from skymoe.eval.aggregate import score_predictions
    from skymoe.eval.predict import generate_predictions
    from skymoe.eval.runner import collect_samples
    from skymoe.eval.suite import load_suite
    from skymoe.model.quantize import quantize_int8
    from skymoe.model.inference import load_model

    suite = load_suite(suite_name)
    samples = collect_samples(suite, limit)
    model, processor = load_model(model_dir)
    scores = {}
    for name, m in (("float32", model), ("int8", quantize_int8(copy.deepcopy(model)))):
        scores[name] = score_predictions(generate_predictions(m, processor, samples, suite))["overall"]
    rows = []
    for task, entry in scores["float32"].items():
        q = scores["int8"][task]["value"]
        rows.append(f"| {task} | {entry['n']} | {entry['metric']} | {entry['value']:.4f} | {q:.4f} | {q - entry['value']:+.4f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="trained SkyMoE directory for the score comparison")
    parser.add_argument("--suite", default="embedded")
    parser.add_argument("--limit", type=int, default=40, help="samples per dataset split")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "int8.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [
        "# Dynamic int8 quantisation on CPU (`benchmarks/int8.py`)",
        "",
        f"Machine: {machine()}; {args.threads} torch thread(s).",
        "Quantised: every `nn.Linear` of the LLM (attention, FFN bases under the LoRA experts, lm_head) with "
        "`torch.ao.quantization.quantize_dynamic` (qint8 weights, activations quantised per batch); router gates, "
        "LoRA expert matrices, vision tower and projector stay float32.",
        "",
        f"## Speed (the `benchmarks/generate.py` tiny MoE: 8 LoRA experts top-2, {args.new_tokens} new tokens, median of {args.repeats} round-robin rounds)",
        "",
        "| batch | float32 tokens/s | int8 tokens/s | speed-up | same next token |",
        "|---|---|---|---|---|",
        *speed_rows(args.new_tokens, args.repeats, [1, 8]),
        "",
    ]
    if args.model:
        lines += [
            f"## Scores (suite `{args.suite}`, first {args.limit} samples per split, model `{args.model}`)",
            "",
            "| task | n | metric | float32 | int8 | change |",
            "|---|---|---|---|---|---|",
            *score_rows(args.model, args.suite, args.limit),
            "",
        ]
    lines.append("The CPU is shared with other jobs; speed ratios come from the same run.\n")
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
