"""The demo's frozen tower (EfficientNet-Lite0, real weights) in PyTorch's two memory formats, side by side.

Convolutions on a CPU run through oneDNN, whose kernels prefer channels-last (NHWC) tensors; PyTorch's
default is NCHW, which the depthwise convolutions of an EfficientNet pay for in layout conversions. This
times the tower's forward (no gradient, as the feature cache and the evaluation run it) on batches of 32
images at the demo's 128 px and at the zoom's 32 px, as built (the default layout) and channels-last (a
copy of the module and the input converted), interleaved over rounds, and the largest difference between
the two outputs.

    python benchmarks/tower_memory_format.py [--rounds 5] [--out benchmarks/results/tower_memory_format.md]

Not wired into the library yet: the uncached training path, the CDA views' first pass, evaluation and
scene inference would all read the faster tower, and the feature cache's speed-up (which divides by the
uncached rate) would shrink; see docs/LEARNING.md.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from _machine import machine
from grounding_probe import demo_model

SIZES = (128, 32)
BATCH = 32


def ms_per_batch(tower, images: torch.Tensor, repeats: int = 4) -> float:
    with torch.no_grad():
        tower(images)
        start = time.perf_counter()
        for _ in range(repeats):
            tower(images)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    from skymoe.data.mgrs_mini import ensure_generated, load_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tower_memory_format.md")
    args = parser.parse_args()
    tower = demo_model(load_split("train", ensure_generated(n=300)))[0].vision_tower.eval()
    lines = ["# The demo's tower in the default and the channels-last memory format, side by side", "",
             f"`python benchmarks/tower_memory_format.py --rounds {args.rounds}`; {machine()}.", "",
             f"EfficientNet-Lite0 with its ImageNet weights, as the demo builds it; batches of {BATCH}, no gradient; "
             f"ms per batch = median of {args.rounds} interleaved rounds of 4 passes.", "",
             "| input | default (NCHW) ms | channels-last ms | speed-up | largest output difference |",
             "| --- | --- | --- | --- | --- |"]
    # two copies, each converted once: a round trip through channels-last leaves some weights' strides changed
    # (size-1 dimensions), which alone makes the default layout faster than the tower as built
    towers = {"default": copy.deepcopy(tower), "channels_last": copy.deepcopy(tower).to(memory_format=torch.channels_last)}
    layouts = {"default": torch.contiguous_format, "channels_last": torch.channels_last}
    for size in SIZES:
        images = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
        times = {name: [] for name in towers}
        for _ in range(args.rounds):
            for name, copied in towers.items():
                times[name].append(ms_per_batch(copied, images.contiguous(memory_format=layouts[name])))
        with torch.no_grad():
            outputs = [copied(images.contiguous(memory_format=layouts[name])) for name, copied in towers.items()]
        difference = float((outputs[0] - outputs[1]).abs().max())
        default, channels_last = (statistics.median(times[k]) for k in towers)
        lines.append(f"| {BATCH} x {size} px | {default:.1f} | {channels_last:.1f} | {default / channels_last:.2f}x | {difference:.1e} |")
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
