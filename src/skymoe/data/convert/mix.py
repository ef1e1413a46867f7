"""A ``data.mix`` entry that names a format: ``{format: coco, labels: FILE, images: DIR, tasks: [...]}``.

Converted in memory at the start of training; chips and band composites go to the cache
(``$SKYMOE_CACHE/derived/convert/<digest>``), keyed by the entry and its label file's
modification time, so an edited label file gets fresh chips.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from skymoe.data.convert import ConvertOptions, convert
from skymoe.data.readers import SampleList

# entry field -> ConvertOptions field, for the fields that are paths
_PATHS = ("images", "raster", "classes")


def entry_options(spec, on_error: str) -> ConvertOptions:
    """ConvertOptions of a mix entry (any object with the DatasetSpec format fields)."""
    return ConvertOptions(
        **{k: Path(getattr(spec, k)) if getattr(spec, k) else None for k in _PATHS},
        split=spec.split, tasks=tuple(spec.tasks) if spec.tasks else None, tile=spec.tile, overlap=spec.overlap,
        bands=list(spec.bands) if spec.bands else None, on_error=on_error, **(spec.options or {}),
    )


def _derived_dir(spec, options: ConvertOptions) -> Path:
    from skymoe.assets import cache_dir

    labels = Path(spec.labels)
    stamp = labels.stat().st_mtime_ns if labels.exists() else 0
    key = json.dumps([spec.format, str(labels.resolve()), stamp, repr(options)], sort_keys=True)
    return cache_dir() / "derived" / "convert" / hashlib.sha256(key.encode()).hexdigest()[:16]


def load_format_entry(spec, on_error: str = "raise") -> SampleList:
    """Samples of a mix entry with ``format``: the same conversion ``skymoe data convert`` runs."""
    options = entry_options(spec, on_error)
    options.derived_dir, options.reuse_images = _derived_dir(spec, options), True
    return convert(spec.format, spec.labels, options).samples
