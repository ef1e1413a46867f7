"""How far a box head on the frozen features gets with a query that needs no language model: a grounding ceiling.

The demo's box head (``skymoe.model.box_head.BoxHead``) scores the cells of the frozen
EfficientNet-Lite0 grid (the demo's stage-1 tower: 8x8 tokens at 128 px, strides 8 and 16)
against a query. Here the same head class reads only its bag of the question's words (no LLM
state), and is trained on MGRS-mini's training grounding samples and scored on the validation
scenes (acc@0.5) as it sees more samples, in two regimes: batch 64 at a constant learning
rate, and the demo's (about 4 grounding samples per step over its 1,110 steps of both stages,
learning rate 2e-3 on a cosine).

    python benchmarks/grounding_probe.py [--scenes 3000] [--out benchmarks/results/grounding_probe.md]

Features are cached (``$SKYMOE_CACHE/features``); a rerun costs the training only (~1 minute).
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import torch
from _machine import machine

import math

# (name, batch, steps at which it is scored, cosine schedule)
REGIMES = (("batch 64, constant lr", 64, (25, 50, 100, 200, 400, 800), False),
           ("the demo's: batch 4, cosine lr", 4, (300, 600, 1110), True))


def demo_model(train):
    """The demo's stage-1 model and processor, untrained but for its tower (its packaged config, a few samples
    for the tokenizer)."""
    import tempfile

    from skymoe.data.schema import write_jsonl
    from skymoe.demo.run import packaged_config
    from skymoe.train.config import parse_config
    from skymoe.train.data import load_mix
    from skymoe.train.stages import build

    raw = packaged_config("stage1.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        write_jsonl(train[:200], Path(tmp) / "tokenizer_text.jsonl")
        raw["data"]["mix"] = [{"path": str(Path(tmp) / "tokenizer_text.jsonl")}]
        cfg = parse_config(raw)
        return build(cfg, load_mix(cfg.data), None)


def demo_tower_source(train):
    """The feature cache over the demo's stage-1 tower."""
    from skymoe.model.feature_source import feature_source

    return feature_source(*demo_model(train))


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def tensors(samples, features, vocabulary):
    """Features [n, N, C], word ids [n, L] with their mask, boxes [n, 4] on 0-100."""
    x = torch.tensor(np.stack([features[s.image] for s in samples])).float()
    ids = [[vocabulary[w] for w in words(s.conversation[0].text) if w in vocabulary] for s in samples]
    width = max(map(len, ids))
    word_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    # boxes on the 0-100 scale the location tokens use
    boxes = torch.tensor([[b.x1 / s.image_size[0], b.y1 / s.image_size[1], b.x2 / s.image_size[0], b.y2 / s.image_size[1]]
                          for s in samples for b in s.boxes[:1]]) * 100
    return x, (word_ids, mask), boxes


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    low, high = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (high - low).clamp(min=0).prod(-1)
    return inter / ((a[:, 2:] - a[:, :2]).prod(-1) + (b[:, 2:] - b[:, :2]).prod(-1) - inter)


def train_head(x, q, boxes, xv, qv, boxes_v, vocab_size, batch, checkpoints, cosine):
    """(step, samples seen, val acc@0.5) at each checkpoint of one head trained from seed 0."""
    from skymoe.model.box_head import BoxHead

    torch.manual_seed(0)
    head = BoxHead(x.shape[-1], 1, int(round(x.shape[1] ** 0.5)), 128, vocab_size, location_start=vocab_size)  # words only
    optimiser = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=0.01)
    total = checkpoints[-1]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)) if cosine else 1.0)
    rows = []
    for step in range(1, total + 1):
        chosen = torch.randint(len(x), (batch,))
        loss = head.loss(*head(head.cells(x[chosen]), None, head.bag(q[0][chosen], q[1][chosen])), boxes[chosen])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step in checkpoints:
            with torch.no_grad():
                predicted = head.decode(*head(head.cells(xv), None, head.bag(*qv))).float()
            rows.append((step, step * batch, float((iou(predicted, boxes_v) >= 0.5).float().mean())))
    return rows


def main() -> None:
    from skymoe.data.mgrs_mini import ensure_generated, load_split
    from skymoe.eval.runner import _read_features

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3000, help="MGRS-mini scenes (the demo's 3000: 80%% train, 10%% val)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "grounding_probe.md")
    args = parser.parse_args()
    root = ensure_generated(n=args.scenes)
    train, val = ([s for s in load_split(split, root) if s.task.value == "grounding"] for split in ("train", "val"))
    start = time.perf_counter()
    features, _ = _read_features({s.image for s in train + val}, demo_tower_source(train))
    vocabulary = {w: i for i, w in enumerate(sorted({w for s in train for w in words(s.conversation[0].text)}))}
    (x, q, boxes), (xv, qv, boxes_v) = tensors(train, features, vocabulary), tensors(val, features, vocabulary)
    grid = int(round(x.shape[1] ** 0.5))
    lines = ["# Grounding ceiling: the box head with a bag-of-words query on the frozen features", "",
             f"`python benchmarks/grounding_probe.py --scenes {args.scenes}`; {machine()}.", "",
             f"MGRS-mini grounding: {len(train)} training samples, {len(val)} validation scenes; "
             f"{grid}x{grid} cells of {x.shape[-1]} features; AdamW, learning rate 2e-3.", "",
             "| regime | steps | samples seen | val acc@0.5 |", "| --- | --- | --- | --- |"]
    for name, batch, checkpoints, cosine in REGIMES:
        for step, seen, acc in train_head(x, q, boxes, xv, qv, boxes_v, len(vocabulary), batch, checkpoints, cosine):
            lines.append(f"| {name} | {step} | {seen} | {acc:.3f} |")
    lines += ["", f"Wall time (features + training): {time.perf_counter() - start:.0f} s."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
