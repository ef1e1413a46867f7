"""What the frozen features allow on MGRS-mini VQA and counting: the question's words alone against the evidence head.

The demo's evidence head (``skymoe.model.evidence``) scores the cells of the frozen
EfficientNet-Lite0 grid (8x8 at 128 px, strides 8 and 16) against the question's bag
of words (and marks the cells under a region question's box), sums them up and adds the
result to the answer's logits. Here the same
classes (``EvidenceHead``, and a ``BoxHead``'s word bag for the question) feed an answer
classifier in place of the LM, on MGRS-mini's training VQA and counting samples,
scored on the validation scenes (exact answer accuracy, per question type too):

* ``words``: a classifier of the question's bag of words alone (a blind model);
* ``evidence``: the same plus the evidence head, trained by the answer loss only;
* ``evidence + cells``: the same plus the per-cell targets of the samples' boxes,
  as the demo trains it.

Each is trained for the demo's 1,110 steps at three batch sizes: about the VQA and
counting samples a demo step held with every task's share equal (8), then 16 and 32.

    python benchmarks/evidence_probe.py [--scenes 3000] [--batches 8 16 32] [--variants ...] [--weight W]
                                        [--out benchmarks/results/evidence_probe.md]

Features are cached (``$SKYMOE_CACHE/features``); a rerun costs the training only (a few minutes).
"""
from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _machine import machine
from grounding_probe import demo_tower_source, words
from torch import nn

STEPS = 1110
BATCHES = (8, 16, 32)
VARIANTS = ("words", "evidence", "evidence + cells")
TASKS = ("vqa", "counting")
BOX = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")


class Probe(nn.Module):
    """The question's bag -> answer logits (the LM's stand-in), plus the evidence head's logits when it has one."""

    def __init__(self, vision_size: int, grid: int, vocab_size: int, answers: int, evidence: bool):
        from skymoe.data.boxes import X_TOKENS
        from skymoe.model.box_head import BoxHead

        super().__init__()
        # the location ids follow the words' (question_ids)
        self.head = BoxHead(vision_size, answers, grid, 128, vocab_size + 2 * len(X_TOKENS), vocab_size, evidence=evidence)
        self.answer = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, answers))

    def forward(self, features, word_ids, mask):
        bag = self.head.bag(word_ids, mask)
        logits = self.answer(bag)
        if self.head.evidence is None:
            return logits, None
        cell_logits, evidence = self.head.evidence(features, word_ids, mask)
        return logits + evidence, cell_logits


def question_ids(text: str, vocabulary: dict[str, int]) -> list[int]:
    """The question's word ids, then its box (a region question's, on 0-100) as location ids after the words':
    x1, y1, x2, y2, as the model's tokenizer writes it."""
    from skymoe.data.boxes import X_TOKENS

    ids = [vocabulary[w] for w in words(text) if w in vocabulary]
    box = BOX.search(text)
    if box:
        x1, y1, x2, y2 = map(int, box.groups())
        start, y = len(vocabulary), len(vocabulary) + len(X_TOKENS)
        ids += [start + x1, y + y1, start + x2, y + y2]
    return ids


def tensors(samples, features, vocabulary, answers, grid):
    from skymoe.model.evidence import cell_targets

    x = torch.tensor(np.stack([features[s.image] for s in samples])).float()
    ids = [question_ids(s.conversation[0].text, vocabulary) for s in samples]
    width = max(map(len, ids))
    word_ids = torch.tensor([row + [0] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    y = torch.tensor([answers.get(s.answer, -100) for s in samples])
    return x, word_ids, mask, y, cell_targets(samples, grid)


def train_probe(variant: str, batch: int, train, val, vocab_size: int, answers: int, weight: float):
    """Per validation sample, 1.0 where the probe's answer is right (seed 0, AdamW 2e-3 on a cosine), and the
    evidence head's own count (its cells' summed probabilities, rounded; None without a head)."""
    from skymoe.model.evidence import evidence_loss

    x, word_ids, mask, y, cells = train
    torch.manual_seed(0)
    grid = int(round(x.shape[1] ** 0.5))
    probe = Probe(x.shape[-1], grid, vocab_size, answers, evidence=variant != "words")
    if probe.head.evidence is not None:
        nn.init.zeros_(probe.head.evidence.out.weight)  # as the model starts it
        nn.init.zeros_(probe.head.evidence.out.bias)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / STEPS)))
    for _ in range(STEPS):
        chosen = torch.randint(len(x), (batch,))
        logits, cell_logits = probe(x[chosen], word_ids[chosen], mask[chosen])
        loss = F.cross_entropy(logits, y[chosen], ignore_index=-100)
        if variant == "evidence + cells":
            loss = loss + weight * evidence_loss(cell_logits, cells[chosen])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    xv, word_ids_v, mask_v, yv, _ = val
    with torch.no_grad():
        logits, cell_logits = probe(xv, word_ids_v, mask_v)
    head_count = None if cell_logits is None else cell_logits.sigmoid().sum(-1).round()
    return (logits.argmax(-1) == yv).float(), head_count


def main() -> None:
    from skymoe.data.mgrs_mini import ensure_generated, load_split
    from skymoe.eval.runner import _read_features

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=3000, help="MGRS-mini scenes (the demo's 3000: 80%% train, 10%% val)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "evidence_probe.md")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--weight", type=float, default=None, help="of the per-cell term (default: the model's loss.evidence)")
    args = parser.parse_args()
    from skymoe.model.configuration import LossSettings

    weight = LossSettings().evidence if args.weight is None else args.weight
    root = ensure_generated(n=args.scenes)
    train, val = ([s for s in load_split(split, root) if s.task.value in TASKS] for split in ("train", "val"))
    start = time.perf_counter()
    features, _ = _read_features({s.image for s in train + val}, demo_tower_source(train))
    vocabulary = {w: i for i, w in enumerate(sorted({w for s in train for w in words(s.conversation[0].text)}))}
    answers = {a: i for i, a in enumerate(sorted({s.answer for s in train}))}
    grid = int(round(len(next(iter(features.values()))) ** 0.5))
    train_t, val_t = (tensors(part, features, vocabulary, answers, grid) for part in (train, val))
    kinds = [f"{s.task.value}/{s.question_type}/{s.granularity.value}" for s in val]
    columns = sorted(set(kinds))
    lines = ["# What the frozen features allow on MGRS-mini VQA and counting: words alone against the evidence head", "",
             f"`python benchmarks/evidence_probe.py --scenes {args.scenes}`; {machine()}.", "",
             f"{len(train)} training samples, {len(val)} validation samples (unseen scenes); {grid}x{grid} cells of "
             f"{train_t[0].shape[-1]} features; {STEPS} steps, AdamW 2e-3 on a cosine, seed 0; per-cell term weight "
             f"{weight}. Exact answer accuracy; `head count`: how often the evidence head's own count (its cells' "
             "summed probabilities, rounded) is the answer, on the counting task's samples.", "",
             "| variant | batch | samples seen | all | " + " | ".join(columns) + " | head count |",
             "| --- | --- | --- | --- | " + " | ".join("---" for _ in columns) + " | --- |"]
    counting = [i for i, s in enumerate(val) if s.task.value == "counting"]
    truth = torch.tensor([float(val[i].answer) for i in counting])
    for batch in args.batches:
        for variant in args.variants:
            right, head_count = train_probe(variant, batch, train_t, val_t, len(vocabulary), len(answers), weight)
            per = [right[[k == c for k in kinds]].mean().item() for c in columns]
            own = "—" if head_count is None else f"{(head_count[counting] == truth).float().mean().item():.2f}"
            lines.append(f"| {variant} | {batch} | {STEPS * batch} | {right.mean().item():.3f} | "
                         + " | ".join(f"{v:.2f}" for v in per) + f" | {own} |")
            print(lines[-1], flush=True)
    lines += ["", f"Wall time (features + training): {time.perf_counter() - start:.0f} s.", "",
              "Columns after `all`: each question type (task/type/granularity) of the validation samples. A region "
              "question's box reaches the head as location ids after the words' (as the model's tokenizer writes it), "
              "which the head reads as the cells it covers."]
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
