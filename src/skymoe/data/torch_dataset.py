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

from skymoe.data.schema import Sample
from skymoe.errors import DataError

logger = logging.getLogger(__name__)
ON_ERROR = ("raise", "skip")


_decoded: dict[str, tuple[int, int]] = {}  # file digest -> size, of files this process decoded without error


def _checked_size(path: str) -> tuple[int, int] | None:
    from skymoe.data.feature_cache import file_digest

    try:
        return _decoded.get(file_digest(path))
    except OSError:
        return None


def _remember_size(path: str, size: tuple[int, int]) -> None:
    from skymoe.data.feature_cache import file_digest

    _decoded[file_digest(path)] = tuple(size)


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
            image = self._load(sample)
            features = self._encode(sample, image.size)
            features["image"] = image
        except DataError as exc:
            return self._skip(sample, exc)
        return features

    def _encode(self, sample: Sample, size: tuple[int, int]) -> dict:
        features = self.processor.encode(sample)
        for box in sample.boxes:  # image_size may be absent or wrong: the opened image decides
            box.validate(size, file=sample.image, record=sample.id)
        return features

    def _encoded(self, sample: Sample, size: tuple[int, int]) -> dict | None:
        """The sample's encoded text (its boxes checked against the image's ``size``), or None when it is skipped."""
        try:
            return self._encode(sample, size)
        except DataError as exc:
            self._skip(sample, exc)
            return None

    def _skip(self, sample: Sample, exc: DataError) -> None:
        if self.on_error == "raise":
            raise exc
        if sample.id not in self.skipped:
            self.skipped[sample.id] = str(exc)
            logger.warning("skipping sample %s: %s", sample.id, exc)
        return None

    def check_all(self, on_image=None) -> list[Sample]:
        """The usable samples, opening each image once (``on_image(path, image, encoded)`` then sees it, with the
        encoded text of its usable samples).

        Samples of one image share its decode; every sample still has its text encoded and its boxes
        checked against the opened image. Bad samples raise or are skipped as ``on_error`` says.
        """
        by_image: dict[str, list[Sample]] = {}
        for sample in self.samples:
            by_image.setdefault(sample.image, []).append(sample)
        good = []
        for path, members in by_image.items():
            checked = _checked_size(path)
            if checked is not None and on_image is None:  # this process decoded this very file already
                good += [s for s in members if self._encoded(s, checked) is not None]
                continue
            try:
                image = self._load(members[0])
            except DataError as exc:
                self._skip(members[0], exc)
                for sample in members[1:]:  # each gets its own message (a bad file fails fast)
                    try:
                        self._load(sample)
                    except DataError as again:
                        self._skip(sample, again)
                continue
            _remember_size(path, image.size)
            encoded = {id(s): self._encoded(s, image.size) for s in members}
            usable = [s for s in members if encoded[id(s)] is not None]
            if usable and on_image is not None:
                on_image(path, image, [encoded[id(s)] for s in usable])
            good += usable
        order = {id(s): i for i, s in enumerate(self.samples)}
        return sorted(good, key=lambda s: order[id(s)])

    def _load(self, sample: Sample):
        try:
            return self.image_loader(sample.image)
        except DataError as exc:
            if exc.record is not None:
                raise
            raise DataError(str(exc), record=sample.id, field=exc.field or "image") from exc
        except (OSError, ValueError) as exc:  # missing/corrupt files surface as typed data errors
            raise DataError(f"cannot read image ({exc})", file=sample.image, record=sample.id, field="image") from exc

    def collate(self, batch: list[dict | None]) -> dict | None:
        """DataLoader collate_fn: drops skipped samples; ``None`` when the whole batch was skipped."""
        features = [f for f in batch if f is not None]
        if not features:
            return None
        images = [f.pop("image") for f in features]
        return self.processor.batch(features, *self.processor.pixel_views(images))

    def report(self) -> str:
        """One line per skipped sample (empty when nothing was skipped)."""
        return "\n".join(f"skipped {sample_id}: {reason}" for sample_id, reason in self.skipped.items())
