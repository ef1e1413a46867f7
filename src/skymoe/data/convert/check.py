"""``skymoe data check``: open every image of a set of samples and check every box against it.

Reports counts and the first errors instead of stopping at one, so a user fixes a file in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from skymoe.data.imagery import DEFAULT_MAX_PIXELS, image_size, load_image
from skymoe.data.schema import Sample, json_lines, sample_from_line
from skymoe.errors import DataError


@dataclass
class CheckResult:
    samples: int = 0
    images: int = 0
    boxes: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, other: "CheckResult") -> None:
        self.samples, self.images, self.boxes = self.samples + other.samples, self.images + other.images, self.boxes + other.boxes
        self.errors += other.errors

    def summary(self, show: int = 5) -> str:
        head = f"{self.samples:,} samples, {self.images:,} images, {self.boxes:,} boxes checked: "
        if self.ok:
            return head + "no errors"
        lines = [head + f"{len(self.errors):,} errors; the first {min(show, len(self.errors))}:"]
        return "\n".join(lines + [f"  {e}" for e in self.errors[:show]])


def read_checked(path: str | Path, result: CheckResult) -> list[Sample]:
    """The valid samples of a JSONL file; every bad line becomes an error in ``result``."""
    samples = []
    for lineno, d in json_lines(path):
        try:
            samples.append(sample_from_line(d, path))
        except DataError as exc:
            result.errors.append(f"line {lineno}: {exc}")
    return samples


def check_samples(samples: list[Sample], result: CheckResult | None = None) -> CheckResult:
    """Decode each image once; each sample's recorded size and boxes must fit the image's real size."""
    result = result or CheckResult()
    sizes: dict[str, tuple[int, int] | None] = {}
    for sample in samples:
        result.samples += 1
        if sample.image not in sizes:
            try:
                sizes[sample.image] = _open(sample.image)
            except DataError as exc:
                sizes[sample.image] = None
                result.errors.append(f"sample {sample.id}: {exc}")
            result.images += 1
        size = sizes[sample.image]
        result.boxes += len(sample.boxes)
        if size is None:
            continue
        if sample.image_size is not None and tuple(sample.image_size) != size:
            result.errors.append(f"sample {sample.id}: records image_size {list(sample.image_size)} but {sample.image} is {size[0]}x{size[1]}")
        for box in sample.boxes:
            try:
                box.validate(size, file=sample.image, record=sample.id)
            except DataError as exc:
                result.errors.append(str(exc))
    return result


def _open(path: str) -> tuple[int, int]:
    """The image's size after decoding it whole (a truncated file fails here, not mid-training); a scene too
    large to decode at once (training reads it in windows) is checked from its header."""
    size = image_size(path)
    if size[0] * size[1] <= DEFAULT_MAX_PIXELS:
        load_image(path)
    return size


def check_jsonl(path: str | Path) -> CheckResult:
    result = CheckResult()
    return check_samples(read_checked(path, result), result)
