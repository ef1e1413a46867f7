"""SampleDataset: a torch Dataset over Samples that loads imagery and encodes with the processor.

With ``on_error="skip"`` a sample whose image or text cannot be used becomes
``None``; :meth:`SampleDataset.collate` drops it, and the skip is counted in
``.skipped`` (id -> reason) and logged, so nothing disappears silently and no
epoch dies on one bad file. The dataset itself is deterministic: shuffling and
augmentation seeds belong to the sampler/trainer.
"""
from __future__ import annotations

import logging
from typing import Sequence

from torch.utils.data import Dataset

from skymoe.data.schema import Sample, SkyMoEDataError

logger = logging.getLogger(__name__)
ON_ERROR = ("raise", "skip")


class SampleDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], processor, on_error: str = "raise", image_loader=None):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.samples = list(samples)
        self.processor = processor
        self.on_error = on_error
        self.skipped: dict[str, str] = {}
        if image_loader is None:
            from skymoe.data.imagery import load_image

            image_loader = load_image
        self.image_loader = image_loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        sample = self.samples[index]
        try:
            features = self.processor.encode(sample)
            image = self._load(sample)
            for box in sample.boxes:  # image_size may be absent or wrong: the opened image decides
                box.validate(image.size, file=sample.image, record=sample.id)
            features["pixel_values"] = self.processor.preprocess_images([image])[0]
        except SkyMoEDataError as exc:
            if self.on_error == "raise":
                raise
            if sample.id not in self.skipped:
                self.skipped[sample.id] = str(exc)
                logger.warning("skipping sample %s: %s", sample.id, exc)
            return None
        return features

    def _load(self, sample: Sample):
        try:
            return self.image_loader(sample.image)
        except SkyMoEDataError as exc:
            if exc.record is not None:
                raise
            raise SkyMoEDataError(str(exc), record=sample.id, field=exc.field or "image") from exc
        except (OSError, ValueError) as exc:  # missing/corrupt files surface as typed data errors
            raise SkyMoEDataError(f"cannot read image ({exc})", file=sample.image, record=sample.id, field="image") from exc

    def collate(self, batch: list[dict | None]) -> dict | None:
        """DataLoader collate_fn: drops skipped samples; ``None`` when the whole batch was skipped."""
        import torch

        features = [f for f in batch if f is not None]
        if not features:
            return None
        pixel_values = torch.stack([f.pop("pixel_values") for f in features])
        return self.processor.pad(features, pixel_values)

    def report(self) -> str:
        """One line per skipped sample (empty when nothing was skipped)."""
        return "\n".join(f"skipped {sample_id}: {reason}" for sample_id, reason in self.skipped.items())
