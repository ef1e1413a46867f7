"""Writing a conversion: JSONL written atomically, image paths relative to it (the folder can move)."""
from __future__ import annotations

import os
from pathlib import Path

from skymoe.data.convert.report import Converted
from skymoe.data.schema import write_jsonl
from skymoe.errors import DataError


def images_dir(out: str | Path) -> Path:
    """Where the chips / band composites of ``out`` go: ``<stem>_images/`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}_images")


def write_converted(converted: Converted, out: str | Path) -> int:
    """Write the samples to ``out`` (temp file + rename: a failure leaves no half-written file)."""
    out = Path(out)
    if not converted.samples:
        raise DataError("nothing to write: the conversion gave no samples", file=str(out))
    for sample in converted.samples:
        sample.image = os.path.relpath(Path(sample.image).resolve(), out.parent.resolve())
    return write_jsonl(converted.samples, out)
