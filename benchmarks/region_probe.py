"""What the frozen tower says about the object under a box: a linear probe on MGRS-mini's object captions.

A region caption of one object ("Describe the region [..]." -> "a red ship") names its colour and
category. The demo's prior copies the caption of the training crop nearest to the box's pixels;
the model reads the demo's frozen EfficientNet-Lite0 grid (8x8 cells at 128 px) and, through the
evidence head, the cells the prompt's box covers (``skymoe.model.grid_reader.instruction_box_cover``).
This probe fits a logistic regression on what the tower gives, on MGRS-mini's training object
captions, and scores the validation scenes' (exact caption):

* ``mean``: the cells' features averaged by how much of each the box covers (the evidence head's
  region read-out, before its projections);
* ``mean + max``: that, and the largest value of each feature over the covered cells;
* ``zoom at S px``: the tower's features of the box's crop read at S pixels, averaged over its grid
  (``skymoe.data.zoom``: what the evidence head reads with ``box_head.zoom``), with the seconds the
  tower took to read every crop at that size (one batch of 64 at a time);
* ``zoom at 32 px, online``: the same zoom read by a head trained as the demo trains (one pass over
  1,000 or 2,000 of the training captions, 3 per step: about what a batch of 32 holds; AdamW at the
  demo's 2e-3, 30 warm-up steps, cosine decay; the evidence head's zoom path: LayerNorm, a linear layer
  to 128, then ``zoom_out``'s GELU and linear read-out, here to the captions):
  how many samples the zoom needs when its read-out learns from boxed rows alone (the evidence head's
  ``zoom_out``).

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
ZOOM_SIZES = (32, 64, 128)


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


def zoom_features(samples, source, size: int) -> tuple[np.ndarray, float]:
    """Each sample's zoom (its prompt's box cropped, read at ``size`` px) averaged over its grid, and the seconds the
    tower took to read them all (timed on the crops themselves: the cache may hold the features already)."""
    from skymoe.data.feature_cache import image_request
    from skymoe.data.imagery import load_image
    from skymoe.data.zoom import zoom_crop, zoom_request

    boxes = [tuple(map(int, BOX.search(s.conversation[0].text).groups())) for s in samples]
    rows, seconds = [], 0.0
    for start in range(0, len(samples), 64):
        part = list(zip(samples[start : start + 64], boxes[start : start + 64]))
        rows += [e.tensor.float().mean(0).numpy() for e in source.get(
            [zoom_request(image_request(s.image, load_image), box, size) for s, box in part])]
        crops = [zoom_crop(load_image(s.image), box) for s, box in part]
        began = time.perf_counter()
        source.encode(crops, size)
        seconds += time.perf_counter() - began
    return np.stack(rows), seconds


def fit_and_score(x: np.ndarray, x_val: np.ndarray, train, val, strength: float) -> float:
    """Validation exact-caption share of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    probe = LogisticRegression(C=strength, max_iter=2000).fit((x - mean) / scale, [s.answer for s in train])
    return float((probe.predict((x_val - mean) / scale) == np.array([s.answer for s in val])).mean())


ONLINE_SAMPLES = (1000, 2000)
ONLINE_BATCH = 3


def online_score(x: np.ndarray, x_val: np.ndarray, train, val, samples: int, seed: int = 0) -> float:
    """Validation exact-caption share of a head trained online on ``samples`` of the training zooms, each seen once."""
    torch.manual_seed(seed)
    labels = sorted({s.answer for s in train})
    index = {a: i for i, a in enumerate(labels)}
    features, targets = torch.tensor(x), torch.tensor([index[s.answer] for s in train])
    head = torch.nn.Sequential(torch.nn.LayerNorm(x.shape[1]), torch.nn.Linear(x.shape[1], 128), torch.nn.GELU(),
                               torch.nn.Linear(128, len(labels)))
    optimiser = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=0.01)
    steps = samples // ONLINE_BATCH
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / 30) * 0.5 * (1 + np.cos(np.pi * step / steps)))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: steps * ONLINE_BATCH]  # each once
    for rows in order.view(steps, ONLINE_BATCH):
        loss = torch.nn.functional.cross_entropy(head(features[rows]), targets[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        predicted = head(torch.tensor(x_val)).argmax(-1).numpy()
    return float((np.array(labels)[predicted] == np.array([s.answer for s in val])).mean())


def main() -> None:
    from skymoe.data.mgrs_mini import ensure_generated, load_split
    from skymoe.eval.runner import _read_features

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3000, help="MGRS-mini scenes (the demo's 3000: 80%% train, 10%% val)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "region_probe.md")
    args = parser.parse_args()
    start = time.perf_counter()
    root = ensure_generated(n=args.scenes)
    train, val = ([s for s in load_split(split, root) if s.question_type == "object_caption"] for split in ("train", "val"))
    source = demo_tower_source(train)
    features, _ = _read_features({s.image for s in train + val}, source)
    lines = ["# What the frozen tower says about the object under a box: a linear probe on MGRS-mini object captions", "",
             f"`python benchmarks/region_probe.py --scenes {args.scenes}`; {machine()}.", "",
             f"{len(train)} training object captions, {len(val)} validation ones (unseen scenes); standardised "
             "features, multinomial logistic regression. Exact caption on validation:", "",
             "| features | C | val exact |", "| --- | --- | --- |"]
    for name, with_max in (("mean", False), ("mean + max", True)):
        x, x_val = region_features(train, features, with_max), region_features(val, features, with_max)
        for strength in STRENGTHS:
            lines.append(f"| {name} | {strength} | {fit_and_score(x, x_val, train, val, strength):.3f} |")
            print(lines[-1], flush=True)
    for size in ZOOM_SIZES:
        (x, seconds), (x_val, val_seconds) = zoom_features(train, source, size), zoom_features(val, source, size)
        for strength in STRENGTHS:
            lines.append(f"| zoom at {size} px ({seconds + val_seconds:.1f} s for {len(train) + len(val)} crops) | {strength} "
                         f"| {fit_and_score(x, x_val, train, val, strength):.3f} |")
            print(lines[-1], flush=True)
        if size == 32:
            for samples in sorted({min(n, len(train)) for n in ONLINE_SAMPLES}):  # fewer scenes, fewer captions
                lines.append(f"| zoom at 32 px, online: {samples} captions, {ONLINE_BATCH} per step | — "
                             f"| {online_score(x, x_val, train, val, samples):.3f} |")
                print(lines[-1], flush=True)
    lines += ["", f"Wall time: {time.perf_counter() - start:.0f} s."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
