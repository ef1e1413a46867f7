"""What the frozen cells under a box say about the object in it: a linear probe on MGRS-mini's object captions.

A region caption of one object ("Describe the region [..]." -> "a red ship") names its colour and
category. The demo's prior copies the caption of the training crop nearest to the box's pixels;
the model reads the demo's frozen EfficientNet-Lite0 grid (8x8 cells at 128 px) and, through the
evidence head, the cells the prompt's box covers (``skymoe.model.grid_reader.instruction_box_cover``).
This probe fits a logistic regression on those cells alone, on MGRS-mini's training object
captions, and scores the validation scenes' (exact caption):

* ``mean``: the cells' features averaged by how much of each the box covers (the evidence head's
  region read-out, before its projections);
* ``mean + max``: that, and the largest value of each feature over the covered cells.

    python benchmarks/region_probe.py [--scenes 3000] [--out benchmarks/results/region_probe.md]

Features are cached (``$SKYMOE_CACHE/features``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine
from evidence_probe import BOX
from grounding_probe import demo_tower_source

STRENGTHS = (0.1, 1.0)  # inverse L2 strength of the logistic regression


def cover(sample, grid: int) -> np.ndarray:
    """[grid*grid] how much of each cell the box in the sample's prompt covers (as the model reads it)."""
    from skymoe.model.grid_reader import instruction_box_cover

    x1, y1, x2, y2 = map(int, BOX.search(sample.conversation[0].text).groups())  # 0-100, as the prompt writes it
    start = 0  # location ids: x tokens 0-100, y tokens 101-201
    ids = torch.tensor([[start + x1, start + 101 + y1, start + x2, start + 101 + y2]])
    return instruction_box_cover(ids, torch.ones_like(ids, dtype=torch.bool), start, grid)[0].numpy()


def region_features(samples, features, with_max: bool) -> np.ndarray:
    rows = []
    for sample in samples:
        cells = np.asarray(features[sample.image], dtype=np.float32)  # [N, C]
        share = cover(sample, int(round(len(cells) ** 0.5)))
        row = (share[:, None] * cells).sum(0) / max(share.sum(), 1e-3)
        rows.append(np.concatenate([row, cells[share > 0].max(0)]) if with_max else row)
    return np.stack(rows)


def main() -> None:
    from sklearn.linear_model import LogisticRegression

    from skymoe.data.mgrs_mini import ensure_generated, load_split
    from skymoe.eval.runner import _read_features

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3000, help="MGRS-mini scenes (the demo's 3000: 80%% train, 10%% val)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "region_probe.md")
    args = parser.parse_args()
    start = time.perf_counter()
    root = ensure_generated(n=args.scenes)
    train, val = ([s for s in load_split(split, root) if s.question_type == "object_caption"] for split in ("train", "val"))
    features, _ = _read_features({s.image for s in train + val}, demo_tower_source(train))
    lines = ["# What the frozen cells under a box say about its object: a linear probe on MGRS-mini object captions", "",
             f"`python benchmarks/region_probe.py --scenes {args.scenes}`; {machine()}.", "",
             f"{len(train)} training object captions, {len(val)} validation ones (unseen scenes); standardised "
             "features, multinomial logistic regression. Exact caption on validation:", "",
             "| features | C | val exact |", "| --- | --- | --- |"]
    for name, with_max in (("mean", False), ("mean + max", True)):
        x, x_val = region_features(train, features, with_max), region_features(val, features, with_max)
        mean, scale = x.mean(0), x.std(0) + 1e-6
        for strength in STRENGTHS:
            probe = LogisticRegression(C=strength, max_iter=2000).fit((x - mean) / scale, [s.answer for s in train])
            right = probe.predict((x_val - mean) / scale) == np.array([s.answer for s in val])
            lines.append(f"| {name} | {strength} | {right.mean():.3f} |")
            print(lines[-1], flush=True)
    lines += ["", f"Wall time: {time.perf_counter() - start:.0f} s."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
