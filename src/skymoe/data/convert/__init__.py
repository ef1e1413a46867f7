"""Converters: the label formats RS teams hold -> the project's JSONL samples (``skymoe data convert``).

Two families:

* dataset readers (``rsvqa``, ``hrvqa``, ``karpathy``, ``dior-rsvg``, ``geochat``/``llava``,
  ``bigearthnet``, ``image-folder``): the modules of :mod:`skymoe.data.readers`, reached by name;
* labels (``coco``, ``voc``, ``yolo``, ``dota``, ``csv``, ``vector``, ``label-raster``): each reader
  yields :class:`~skymoe.data.convert.labelled.LabelledImage` (an image, its boxes or class shares),
  optionally cut into chips (:mod:`~skymoe.data.convert.chips`), and
  :mod:`~skymoe.data.convert.derive` asks the MGRS-mini questions of them (``tasks``).

:func:`convert` is the one entry point, for the CLI and for ``data.mix`` entries with ``format:``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from skymoe.errors import DataError

# format -> "module:function"; the function takes (source: Path, options: ConvertOptions) -> Converted
FORMATS = {
    "rsvqa": "skymoe.data.convert.datasets:rsvqa",
    "hrvqa": "skymoe.data.convert.datasets:hrvqa",
    "karpathy": "skymoe.data.convert.datasets:karpathy",
    "dior-rsvg": "skymoe.data.convert.datasets:dior_rsvg",
    "geochat": "skymoe.data.convert.datasets:conversations",
    "llava": "skymoe.data.convert.datasets:conversations",
    "bigearthnet": "skymoe.data.convert.datasets:bigearthnet",
    "image-folder": "skymoe.data.convert.datasets:image_folder",
    "coco": "skymoe.data.convert.coco:read_coco",
    "voc": "skymoe.data.convert.voc:read_voc",
    "yolo": "skymoe.data.convert.txt_labels:read_yolo",
    "dota": "skymoe.data.convert.txt_labels:read_dota",
    "csv": "skymoe.data.convert.csv_boxes:read_csv_boxes",
    "vector": "skymoe.data.convert.vector:read_vector",
    "label-raster": "skymoe.data.convert.label_raster:read_label_raster",
}
BOX_TASKS = ("grounding", "counting", "region_caption", "classification", "multilabel")
DEFAULT_BOX_TASKS = ("grounding", "counting", "region_caption")
# ConvertOptions fields a data.mix entry sets under ``options:`` (the others are entry keys of their own)
MIX_OPTIONS = ("label_field", "point_size", "min_share", "dataset", "seed", "rename")


@dataclass
class ConvertOptions:
    """Everything a format may need; each format reads the fields it knows and ignores the rest."""

    images: Path | None = None  # image folder (label formats) / image_dir (karpathy, geochat)
    raster: Path | None = None  # the GeoTIFF under vector labels or a label raster
    classes: Path | None = None  # class-name file (YOLO, label raster, image-folder)
    split: str = "train"
    tasks: tuple[str, ...] | None = None  # None: the format's default
    tile: int | None = None  # chip side in pixels; None: whole images
    overlap: int = 0
    bands: list[int] | None = None  # 1-based bands written as RGB chips/images
    label_field: str | None = None  # vector: the property holding the class name
    point_size: float = 8.0  # vector: side in pixels of the box around a point label
    min_share: float = 0.01  # label raster: least area share for a class to count as present (multilabel)
    on_error: str = "raise"
    derived_dir: Path | None = None  # where chips / band composites go (None: nothing may be written)
    reuse_images: bool = False  # derived_dir is a cache keyed by the labels: keep the images already there
    dataset: str | None = None
    seed: int = 0
    rename: dict[str, str] | None = None  # class name in the labels -> name in the questions ("Dead" -> "dead tree")


def format_names() -> list[str]:
    return list(FORMATS)


def convert(format: str, source: str | Path, options: ConvertOptions | None = None):
    """Samples of ``source`` in ``format``: a :class:`~skymoe.data.convert.report.Converted`."""
    options = options or ConvertOptions()
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}", field="format")
    if options.on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be one of ('raise', 'skip'), got {options.on_error!r}")
    if options.tasks is not None:
        unknown = sorted(set(options.tasks) - set(BOX_TASKS))
        if unknown:
            raise DataError(f"unknown tasks {unknown}; expected some of {', '.join(BOX_TASKS)}", field="tasks")
    if options.tile is not None and not 0 <= options.overlap < options.tile:
        raise DataError(f"overlap {options.overlap} must be 0 or more and less than the tile {options.tile}", field="overlap")
    module, function = FORMATS[format].split(":")
    return getattr(importlib.import_module(module), function)(Path(source), options)
