"""Where a cached training step's time can still go: the demo's LLM forward + backward, variants side by side.

With the tower's features cached, a demo step is the small Llama's forward and backward
over ~110 tokens x 32 samples (64 of them visual tokens). This script times that step
(random inputs of the demo's shapes, the loss on 10 answer positions per row, AdamW) in
variants one may reach for on a CPU, in one process, interleaved:

* ``sdpa``: the demo's (transformers' scaled_dot_product_attention);
* ``eager attention``: transformers' matmul + softmax attention;
* ``bf16 autocast``: torch.autocast(cpu, bfloat16) around the forward;
* ``bf16 autocast, fp32 attention``: the same with SkyMoE's attention (``skymoe_sdpa``), which reads float32
  under CPU autocast (:mod:`skymoe.model.attention`): what ``precision: bf16``/``auto`` runs;
* ``fused AdamW``: AdamW(fused=True);
* ``torch.compile``: the decoder compiled with dynamic shapes (its compile time printed apart);
* ``torch.compile, bf16, fp32 attention``: both, as the demo trains.

    PYTHONPATH=src python benchmarks/llm_step_variants.py [--steps 15] [--no-compile] [--out benchmarks/results/llm_step_variants.md]

Prints and writes ms per step (median of rounds) and each variant's ratio to ``sdpa``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _machine import machine

BATCH, HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE, VOCAB = 32, 128, 4, 4, 2, 320, 2000  # skymoe/demo/stage1.yaml
LENGTHS = range(105, 120)  # the demo's padded batch lengths


def llm(attention: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                         num_key_value_heads=KV_HEADS, intermediate_size=INTERMEDIATE, vocab_size=VOCAB,
                         attn_implementation=attention)
    return LlamaForCausalLM(config)


class Variant:
    def __init__(self, name: str, attention: str = "sdpa", autocast: bool = False, fused: bool = False, compiled: bool = False):
        self.name, self.autocast = name, autocast
        self.model = llm(attention)
        self.decoder = torch.compile(self.model.model, dynamic=True) if compiled else self.model.model
        self.optimiser = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=fused)

    def step(self, length: int) -> None:
        embeds = torch.randn(BATCH, length, HIDDEN)
        mask = torch.ones(BATCH, length, dtype=torch.long)
        mask[: BATCH // 2, -5:] = 0  # right padding, as the collator makes it
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            states = self.decoder(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            loss = self.model.lm_head(states[:, -10:]).float().logsumexp(-1).mean()
        loss.backward()
        self.optimiser.step()
        self.optimiser.zero_grad()

    def time(self, steps: int) -> float:
        start = time.perf_counter()
        for i in range(steps):
            self.step(LENGTHS[i % len(LENGTHS)])
        return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "llm_step_variants.md")
    args = parser.parse_args()
    import skymoe.model.attention  # noqa: F401  (registers skymoe_sdpa)

    variants = [Variant("sdpa"), Variant("eager attention", attention="eager"), Variant("bf16 autocast", autocast=True),
                Variant("bf16 autocast, fp32 attention", attention="skymoe_sdpa", autocast=True), Variant("fused AdamW", fused=True)]
    if not args.no_compile:
        variants += [Variant("torch.compile", compiled=True),
                     Variant("torch.compile, bf16, fp32 attention", attention="skymoe_sdpa", autocast=True, compiled=True)]
    warm = {}
    for v in variants:  # first steps: allocations, and the compile
        start = time.perf_counter()
        for length in (108, 110, 119):
            v.step(length)
        warm[v.name] = time.perf_counter() - start
    times = {v.name: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            times[v.name].append(v.time(args.steps))
    base = statistics.median(times["sdpa"])
    lines = ["# The demo's cached training step (the LLM's forward + backward + AdamW) in variants, side by side", "",
             f"`PYTHONPATH=src python benchmarks/llm_step_variants.py --steps {args.steps} --rounds {args.rounds}`; {machine()}.", "",
             f"Random inputs of the demo's shapes: batch {BATCH}, {LAYERS} layers of {HIDDEN}, padded lengths "
             f"{LENGTHS.start}-{LENGTHS.stop - 1}; ms per step = median of {args.rounds} interleaved rounds of "
             f"{args.steps} steps; the first 3 steps (allocations, the compile) are timed apart.", "",
             "| variant | ms per step | speed vs sdpa | first 3 steps (s) |", "| --- | --- | --- | --- |"]
    for name, values in times.items():
        ms = statistics.median(values)
        lines.append(f"| {name} | {ms:.1f} | {base / ms:.2f}x | {warm[name]:.1f} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
