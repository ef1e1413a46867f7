"""Training data: the weighted dataset mix, a resumable deterministic sampler, CDA and collation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from skymoe.config import CDASection, DataSection
from skymoe.data.cda import CDAugmenter, view_sample
from skymoe.data.readers import Collector, SampleList
from skymoe.data.schema import Sample, SkyMoEDataError, json_lines, sample_from_line


@dataclass
class MixPart:
    label: str  # dataset name or JSONL path, for messages
    samples: list[Sample]
    weight: float


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
        raise SkyMoEDataError("the dataset mix is empty: set data.mix to at least one embedded dataset or JSONL file")
    parts = []
    for spec in data.mix:
        if spec.name is not None:
            from skymoe.data.datasets import load_dataset

            label, samples = f"{spec.name}:{spec.split}", load_dataset(spec.name, spec.split, on_error=data.on_error)
        else:
            label, samples = spec.path, read_jsonl_part(spec.path, data.on_error)
        samples = samples[: spec.limit] if spec.limit is not None else samples
        if not samples:
            raise SkyMoEDataError(f"dataset mix entry {label} has no samples", field="data.mix")
        parts.append(MixPart(label, samples, spec.weight))
    return parts


class MixSampler(Sampler):
    """Yields ``(epoch, draw_index, sample_index)``: a weighted, shuffled epoch fixed by (seed, epoch).

    Each part contributes ``round(weight * len(part))`` draws per epoch
    (``floor(weight)`` full passes plus a random subset). Because an epoch's
    order depends only on the seed and the epoch number, a resumed run that
    skips the batches already seen reproduces the uninterrupted order exactly;
    ``draw_index`` seeds the sample's augmentation.
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        self.sizes, self.weights, self.seed = sizes, weights, seed
        self.offsets = np.cumsum([0, *sizes[:-1]])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(int(round(w * n)) for n, w in zip(self.sizes, self.weights))

    def indices(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        draws = []
        for n, w, offset in zip(self.sizes, self.weights, self.offsets):
            total = int(round(w * n))
            full, rest = divmod(total, n)
            picks = [rng.permutation(n) for _ in range(full)] + [rng.permutation(n)[:rest]]
            draws.append(np.concatenate(picks) + offset)
        return rng.permutation(np.concatenate(draws))

    def __iter__(self):
        for draw, index in enumerate(self.indices(self.epoch)):
            yield self.epoch, draw, int(index)


class TrainDataset(Dataset):
    """Items are (sample, image, local view or None) after CDA; indexed by the MixSampler's triples."""

    def __init__(self, parts: list[MixPart], cda: CDASection, seed: int, image_loader):
        self.samples = [s for part in parts for s in part.samples]
        self.image_loader = image_loader
        self.augment = (
            CDAugmenter(seed, cda.pair_prob, cda.cutout_prob, cda.max_cutout, cda.attribute_prob) if cda.enabled else None
        )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, draw, index = key
        sample = self.samples[index]
        image = self.image_loader(sample.image)
        if self.augment is None:
            return sample, image, None
        return self.augment(sample, image, epoch, draw)


class TrainCollator:
    """Processor collation plus the CDA local views appended as extra rows.

    View rows carry only a granularity label: their answers are not
    supervised (labels -100) and their task is unknown (-100); ``cda_view``
    marks them so that metrics count real samples only.
    """

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, items) -> dict:
        samples = [s for s, _, _ in items]
        images = [im for _, im, _ in items]
        views = [(s, v) for s, _, v in items if v is not None]
        all_samples = samples + [view_sample(s, v) for s, v in views]
        all_images = images + [v.image for _, v in views]
        batch = self.processor.collate(all_samples, all_images)
        is_view = torch.zeros(len(all_samples), dtype=torch.bool)
        is_view[len(samples) :] = True
        if views:
            batch["labels"][is_view] = -100
            batch["task_labels"][is_view] = -100
        batch["cda_view"] = is_view
        return batch
