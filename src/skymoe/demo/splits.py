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

import functools
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
    "neon_trees": (("train", "val"), ("test",)),  # spatial splits: no test chip overlaps a training chip
    "landsat_landcover": (("train", "val"), ("test",)),
    "mgrs_mini": (("train",), ("test",)),
}
# The same sources for tuning a recipe (`skymoe demo --heldout val`): the validation splits are held out and
# the test splits are not read. HRVQA's embedded copy has no test split; its val split is held out in both.
DEMO_TUNING_SOURCES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "rsvqa_lr": (("train",), ("val",)),
    "rsvqa_hr": (("train",), ("val",)),
    "hrvqa": (("train",), ("val",)),
    "bigearthnet": (("train",), ("val",)),
    "neon_trees": (("train",), ("val",)),
    "landsat_landcover": (("train",), ("val",)),
    "mgrs_mini": (("train",), ("val",)),
}
HELDOUT_SOURCES = {"test": DEMO_SOURCES, "val": DEMO_TUNING_SOURCES}


SYNTHETIC_DATASETS = {"mgrs_mini"}
# Chips of labelled scenes: held out by place (their spatial test split), not by question (a chip's few
# questions are about the same trees).
SPATIAL_DATASETS = {"neon_trees", "landsat_landcover"}


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
    mgrs_scenes: int = 1000,
    mgrs_train: int | None = None,
    eval_per_task: int | None = None,
    real_eval_limit: int | None = None,
    datasets: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = DEMO_SOURCES,
) -> DemoSplits:
    """Split every demo dataset into train / unseen-question / unseen-image sets.

    ``question_holdout`` of the questions of each training image go to
    ``unseen_questions`` (single-question images — BigEarthNet, HRVQA — stay in
    train; so do the chips of :data:`SPATIAL_DATASETS`). MGRS-mini is generated with ``mgrs_scenes`` scenes (80% train, 10% test);
    ``mgrs_train`` caps its training samples and ``eval_per_task`` its held-out samples
    of each task (seeded samples). The real held-out sets are small and kept whole (a
    sample of them would add noise to the numbers that matter) unless
    ``real_eval_limit`` caps them too (smoke runs).
    """
    rng = random.Random(seed)
    splits = DemoSplits()
    for name, (train_splits, heldout_splits) in datasets.items():
        load = _mgrs_loader(mgrs_scenes) if name in SYNTHETIC_DATASETS else functools.partial(load_dataset, name)
        seen = [s for split in train_splits for s in load(split)]
        unseen = [s for split in heldout_splits for s in load(split)]
        if name in SYNTHETIC_DATASETS:
            train, held_q = _limited(seen, mgrs_train, rng), []
            unseen = [s for task in sorted({s.task for s in unseen}) for s in _limited([u for u in unseen if u.task == task], eval_per_task, rng)]
        else:
            held_q = [] if name in SPATIAL_DATASETS else _hold_out_questions(seen, question_holdout, rng)
            held_ids = {s.id for s in held_q}
            train = [s for s in seen if s.id not in held_ids]
            held_q, unseen = _limited(held_q, real_eval_limit, rng), _limited(unseen, real_eval_limit, rng)
        splits.train += train
        splits.unseen_questions += held_q
        splits.unseen_images += unseen
    return splits


def _mgrs_loader(scenes: int):
    """MGRS-mini splits of ``scenes`` scenes (generated once into the cache, on every core)."""
    import os

    from skymoe.data.mgrs_mini import ensure_generated, load_split

    def load(split: str):
        root = ensure_generated(n=scenes, workers=os.cpu_count() or 1)
        return load_split(split, root)

    return load


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
