"""Training data: the weighted dataset mix, a resumable deterministic sampler, CDA and collation."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from skymoe.train.config import CDASection, DataSection
from skymoe.data.cda import CDAugmenter, view_sample
from skymoe.data.feature_cache import Produced, ViewRequest, image_request
from skymoe.data.readers import Collector, SampleList
from skymoe.data.schema import Granularity, Sample, json_lines, sample_from_line
from skymoe.errors import DataError
from skymoe.model.evidence import cell_targets


@dataclass
class MixPart:
    label: str  # dataset name or JSONL path, for messages
    samples: list[Sample]
    weight: float
    balance: str | None = None  # "task": draws shared by the part's tasks, equally unless task_weights says
    task_weights: dict[str, float] | None = None

    def groups(self) -> list[tuple[list[int], float]] | None:
        """(indices of the part's samples, share weight) per task, in task order, when its draws are task-balanced."""
        if self.balance != "task":
            return None
        by_task: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            by_task.setdefault(s.task.value, []).append(i)
        weights = self.task_weights or {}
        return [(by_task[t], float(weights.get(t, 1.0))) for t in sorted(by_task)]


def read_jsonl_part(path: str, on_error: str = "raise") -> SampleList:
    """Samples of a JSONL mix entry under ``data.on_error``, like an embedded dataset's reader.

    ``skip`` drops a bad line (malformed JSON or an invalid record), keeps the
    reason in ``SampleList.skipped`` under ``line N`` (ids may repeat or be
    missing) and logs one warning with the count.
    """
    out = Collector(path, on_error)
    for lineno, d in json_lines(path):
        out.add(lambda d=d: sample_from_line(d, path), record=f"line {lineno}")
    return out.result()


def load_mix(data: DataSection) -> list[MixPart]:
    """Load every entry of the mix; an empty mix or an empty entry is an error before training."""
    if not data.mix:
        raise DataError("the dataset mix is empty: set data.mix to at least one embedded dataset or JSONL file")
    parts = []
    for spec in data.mix:
        label, samples = load_mix_entry(spec, data.on_error)
        samples = samples[: spec.limit] if spec.limit is not None else samples
        if not samples:
            raise DataError(f"dataset mix entry {label} has no samples", field="data.mix")
        parts.append(MixPart(label, samples, spec.weight, spec.balance, spec.task_weights))
    return parts


def load_mix_entry(spec, on_error: str = "raise") -> tuple[str, SampleList]:
    """(label for messages, samples) of one mix entry: embedded dataset, JSONL file or labels in a format."""
    if spec.name is not None:
        from skymoe.data.datasets import load_dataset

        return f"{spec.name}:{spec.split}", load_dataset(spec.name, spec.split, on_error=on_error)
    if spec.format is not None:
        from skymoe.data.convert.mix import load_format_entry

        return f"{spec.format}:{spec.labels}", load_format_entry(spec, on_error)
    return spec.path, read_jsonl_part(spec.path, on_error)


class MixSampler(Sampler):
    """Yields ``(epoch, draw_index, sample_index)``: a weighted, shuffled epoch fixed by (seed, epoch).

    Each part contributes ``round(weight * len(part))`` draws per epoch
    (``floor(weight)`` full passes plus a random subset). A part with ``groups``
    ((sample indices, weight) per task) shares its draws among the groups in
    proportion to their weights, each cycling through shuffled passes of its own samples. Because an epoch's
    order depends only on the seed and the epoch number, a resumed run that
    skips the batches already seen reproduces the uninterrupted order exactly;
    ``draw_index`` seeds the sample's augmentation.
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int,
                 groups: list[list[tuple[list[int], float]] | None] | None = None):
        self.sizes, self.weights, self.seed = sizes, weights, seed
        self.groups = groups or [None] * len(sizes)
        self.offsets = np.cumsum([0, *sizes[:-1]])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(int(round(w * n)) for n, w in zip(self.sizes, self.weights))

    def indices(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        draws = []
        for n, w, offset, groups in zip(self.sizes, self.weights, self.offsets, self.groups):
            total = int(round(w * n))
            if groups is None:
                draws.append(_passes(np.arange(n), total, rng) + offset)
                continue
            shares = np.array([w for _, w in groups], dtype=float)
            quota = np.floor(total * shares / shares.sum() + 1e-9).astype(int)
            quota[rng.permutation(len(groups))[: total - quota.sum()]] += 1
            draws += [_passes(np.asarray(g), q, rng) + offset for (g, _), q in zip(groups, quota)]
        return rng.permutation(np.concatenate(draws))

    def __iter__(self):
        for draw, index in enumerate(self.indices(self.epoch)):
            yield self.epoch, draw, int(index)


@dataclass
class TrainItem:
    """One draw: the sample, the request for its image view, and the request for a paired local view (CDA)."""

    sample: Sample
    request: ViewRequest
    view: ViewRequest | None = None


def _passes(indices: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` draws from ``indices``: whole shuffled passes, then a random part of one more."""
    full, rest = divmod(count, len(indices))
    return np.concatenate([indices[rng.permutation(len(indices))] for _ in range(full)] + [indices[rng.permutation(len(indices))[:rest]]])


class TrainDataset(Dataset):
    """Items are :class:`TrainItem` s, indexed by the MixSampler's triples. Nothing is decoded here:
    a view's pixels are made only when the collator's source has no features for it."""

    def __init__(self, parts: list[MixPart], cda: CDASection, seed: int, image_loader, blind: bool = False):
        self.samples = [s for part in parts for s in part.samples]
        self.image_loader = image_loader
        self.blind = blind
        self.augment = (
            CDAugmenter(seed, cda.pair_prob, cda.cutout_prob, cda.max_cutout, cda.attribute_prob, cda.variants)
            if cda.enabled and not blind
            else None
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, int]) -> TrainItem:
        epoch, draw, index = key
        sample = self.samples[index]
        plain = image_request(sample.image, self.image_loader, blind=self.blind)
        if self.augment is None:
            return TrainItem(sample, plain)
        variant = self.augment.variant(epoch, draw)
        plan = self.augment.plan(sample, variant)
        if not plan.changes_anything:
            return TrainItem(sample, plain)
        return _variant_item(self.augment, sample, variant, plain, self.image_loader, plan)


def _variant_item(augment: CDAugmenter, sample: Sample, variant: int, plain: ViewRequest, image_loader, plan) -> TrainItem:
    """The item of one CDA variant: the edited image (its edited sample kept with its features) and its local view.

    A variant that only pairs a view keeps the plain image (and its cached features)."""
    # The key names everything the variant depends on: the image's content, the augmenter's settings and the
    # sample itself (an edited answer or box in the data is a new key, never the old edit).
    settings = (augment.seed, variant, augment.pair_prob, augment.cutout_prob, augment.max_cutout, augment.attribute_prob)
    record = {k: v for k, v in sample.to_dict().items() if k != "image"}
    digest = hashlib.sha1(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()
    key = f"{plain.key.split('|')[0]}|cda:{':'.join(map(str, settings))}:{digest}"
    made: list = []

    def apply():  # once per item, whichever of the two requests misses first
        if not made:
            made.append(augment.apply(sample, image_loader(sample.image), variant))
        return made[0]

    def produce_image() -> Produced:
        edited, image, view = apply()
        return Produced(image, {"sample": edited.to_dict()})

    def produce_view() -> Produced:
        view = apply()[2]
        return Produced(view.image, {"granularity": view.granularity.value, "size": list(view.image.size)})

    view = ViewRequest(key + "|view", produce_view) if plan.pair else None
    edits_pixels = plan.cutout or plan.recolour
    return TrainItem(sample, ViewRequest(key, produce_image) if edits_pixels else plain, view)


def _edited(sample: Sample, meta: dict) -> Sample:
    """The sample as its CDA variant edited it (kept with the variant's features), else the sample itself."""
    if "sample" not in meta:
        return sample
    edited = Sample.from_dict(meta["sample"])
    edited.image = sample.image  # the file may have moved since the entry was written; its content has not
    return edited


class TrainCollator:
    """Batches of items through a feature source (cached tower features, or pixels), plus CDA local views as extra rows.

    View rows carry only a granularity label: their answers are not
    supervised (labels -100) and their task is unknown (-100); ``cda_view``
    marks them so that metrics count real samples only.
    """

    def __init__(self, processor, source, evidence_grid: int | None = None):
        """``evidence_grid``: the grid side of a model with an evidence head, whose per-cell targets the batch
        then carries as ``evidence_cells`` (:func:`skymoe.model.evidence.cell_targets`)."""
        self.processor = processor
        self.source = source
        self.evidence_grid = evidence_grid

    def __call__(self, items: list[TrainItem]) -> dict:
        entries = self.source.get([item.request for item in items])
        samples = [_edited(item.sample, e.meta) for item, e in zip(items, entries)]
        paired = [(item, s) for item, s in zip(items, samples) if item.view is not None]
        view_entries = self.source.get([item.view for item, _ in paired])
        view_samples = [view_sample(s, Granularity(e.meta["granularity"]), tuple(e.meta["size"])) for (_, s), e in zip(paired, view_entries)]
        all_samples = samples + view_samples
        tensors = torch.stack([e.tensor for e in entries + view_entries])
        encoded = [self.processor.encode(s) for s in all_samples]
        requests = [item.request for item in items] + [item.view for item, _ in paired]  # an edit's zoom crops the edit
        batch = self.processor.with_zoom(self.processor.pad(encoded, tensors, image_key=self.source.batch_key),
                                         encoded, requests, self.source)
        is_view = torch.zeros(len(all_samples), dtype=torch.bool)
        is_view[len(samples) :] = True
        if view_samples:
            batch["labels"][is_view] = -100
            batch["task_labels"][is_view] = -100
        batch["cda_view"] = is_view
        if self.evidence_grid is not None:  # view rows name no objects of their own
            batch["evidence_cells"] = cell_targets(samples + [None] * len(view_samples), self.evidence_grid)
        return batch
