"""Honest evaluation splits for the demo.

The embedded real datasets are tiny (RSVQA-LR: 12 images), so the demo reports
two held-out sets, labelled separately:

* ``unseen_images`` — every question of images the model never trained on (the
  datasets' own held-out splits, whose images are disjoint from training);
* ``unseen_questions`` — a seeded fraction of the questions of the TRAINING
  images of the real datasets, withheld from training: the image was seen, the
  question was not. (MGRS-mini is large enough to need only unseen images.)

Nothing is sampled twice: a question is in exactly one of train /
unseen_questions / unseen_images, and an unseen image never appears in train.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from skymoe.data.datasets import load_dataset
from skymoe.data.schema import Sample, write_jsonl

# dataset -> (splits trained on, held-out splits of unseen images)
DEMO_SOURCES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rsvqa_lr": (("train", "val"), ("test",)),
    "rsvqa_hr": (("train", "val"), ("test", "test_phili")),  # test_phili: RSVQA-HR's second test city
    "hrvqa": (("train",), ("val",)),
    "bigearthnet": (("train", "val"), ("test",)),
    "mgrs_mini": (("train",), ("test",)),
}


SYNTHETIC_DATASETS = {"mgrs_mini"}


@dataclass
class DemoSplits:
    train: list[Sample] = field(default_factory=list)
    unseen_questions: list[Sample] = field(default_factory=list)
    unseen_images: list[Sample] = field(default_factory=list)

    def write(self, out_dir: Path) -> dict[str, Path]:
        """Each split as JSONL, and the training split again as its real and synthetic parts (for mix weights)."""
        paths = {}
        parts = {
            "train": self.train,
            "train_real": [s for s in self.train if s.dataset not in SYNTHETIC_DATASETS],
            "train_synthetic": [s for s in self.train if s.dataset in SYNTHETIC_DATASETS],
            "unseen_questions": self.unseen_questions,
            "unseen_images": self.unseen_images,
        }
        for name, samples in parts.items():
            paths[name] = out_dir / f"{name}.jsonl"
            write_jsonl(samples, paths[name])
        return paths

    def counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for name in ("train", "unseen_questions", "unseen_images"):
            for s in getattr(self, name):
                table.setdefault(s.dataset, {}).setdefault(name, 0)
                table[s.dataset][name] += 1
        return table


def _limited(samples: list[Sample], limit: int | None, rng: random.Random) -> list[Sample]:
    if limit is None or len(samples) <= limit:
        return samples
    return rng.sample(samples, limit)


def build_demo_splits(
    *,
    seed: int,
    question_holdout: float = 0.15,
    mgrs_train: int | None = None,
    eval_limit: int | None = None,
    real_eval_limit: int | None = None,
    datasets: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = DEMO_SOURCES,
) -> DemoSplits:
    """Split every demo dataset into train / unseen-question / unseen-image sets.

    ``question_holdout`` of the questions of each training image go to
    ``unseen_questions`` (single-question images — BigEarthNet, HRVQA — stay in
    train). ``mgrs_train`` caps the synthetic training samples; ``eval_limit``
    caps its held-out samples (seeded sample). The real held-out sets are small
    and kept whole (a sample of them would add noise to the numbers that matter)
    unless ``real_eval_limit`` caps them too (smoke runs).
    """
    rng = random.Random(seed)
    splits = DemoSplits()
    for name, (train_splits, heldout_splits) in datasets.items():
        seen = [s for split in train_splits for s in load_dataset(name, split)]
        if name in SYNTHETIC_DATASETS:
            train, held_q = _limited(seen, mgrs_train, rng), []
        else:
            held_q = _hold_out_questions(seen, question_holdout, rng)
            held_ids = {s.id for s in held_q}
            train = [s for s in seen if s.id not in held_ids]
        unseen = [s for split in heldout_splits for s in load_dataset(name, split)]
        splits.train += train
        limit = eval_limit if name in SYNTHETIC_DATASETS else real_eval_limit
        splits.unseen_questions += _limited(held_q, limit, rng)
        splits.unseen_images += _limited(unseen, limit, rng)
    return splits


def _hold_out_questions(samples: list[Sample], fraction: float, rng: random.Random) -> list[Sample]:
    """A seeded ``fraction`` of each image's questions (images with one question keep it)."""
    by_image: dict[str, list[Sample]] = {}
    for s in samples:
        by_image.setdefault(s.image, []).append(s)
    held = []
    for questions in by_image.values():
        if len(questions) > 1:
            held += rng.sample(questions, round(fraction * len(questions)))
    return held
