"""skymoe data convert over the dataset readers: the same samples as the Python readers, written as JSONL."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from _convert_fixtures import read_out, run_cli, write_png
from skymoe.data.readers.hrvqa import read_hrvqa
from skymoe.data.readers.rsvqa import read_rsvqa
from skymoe.data.schema import read_jsonl
from test_readers import DIOR_FILES, conversation_records, write_dior


@pytest.mark.parametrize("fmt, asset, split, reader", [("rsvqa", "rsvqa_lr", "val", read_rsvqa), ("hrvqa", "hrvqa", "train", read_hrvqa)])
def test_real_vqa_sets_convert_to_what_their_readers_give(real_assets, tmp_path, capsys, fmt, asset, split, reader):
    out = tmp_path / f"{fmt}.jsonl"
    assert run_cli("convert", fmt, real_assets[asset], "--split", split, "--out", out) == 0
    expected = reader(real_assets[asset], split)
    assert [s.to_dict() for s in read_jsonl(out)] == [s.to_dict() for s in expected]  # image paths resolve to the same files
    images = len({s.image for s in expected})
    assert capsys.readouterr().out.startswith(f"wrote {len(expected):,} samples from {images} images (0 objects) to {out}")


def test_dior_rsvg_region_captions_and_geochat_conversations(tmp_path):
    root = write_dior(tmp_path / "dior", DIOR_FILES, {"test": [1]})
    out = tmp_path / "dior.jsonl"
    assert run_cli("convert", "dior-rsvg", root, "--split", "test", "--tasks", "region_caption", "--out", out) == 0
    (sample,) = read_jsonl(out)
    assert sample.question == "Describe the object in [12, 12, 38, 32]." and sample.answer == "the large airplane"
    assert read_out(out)[0]["image"] == "dior/JPEGImages/00001.jpg"

    Image.new("RGB", (200, 100)).save(tmp_path / "scene.png")
    (tmp_path / "geochat.json").write_text(json.dumps(conversation_records()))
    out = tmp_path / "geochat.jsonl"
    assert run_cli("convert", "geochat", tmp_path / "geochat.json", "--out", out) == 0
    assert [s.task.value for s in read_jsonl(out)] == ["grounding", "region_caption", "caption", "vqa"]


def test_dior_rsvg_takes_one_task(tmp_path, capsys):
    root = write_dior(tmp_path / "dior", DIOR_FILES, {"test": [1]})
    assert run_cli("convert", "dior-rsvg", root, "--tasks", "grounding,counting", "--out", tmp_path / "o.jsonl") == 2
    assert "DIOR-RSVG gives one task, grounding or region_caption" in capsys.readouterr().err


def test_dataset_readers_are_formats_too_and_bands_make_rgb_composites(tmp_path, capsys):
    import rasterio

    for cls, seed in (("forest", 1), ("river", 2)):
        (tmp_path / "eurosat" / cls).mkdir(parents=True)
        data = np.random.default_rng(seed).integers(0, 3000, (13, 16, 16)).astype(np.uint16)
        with rasterio.open(tmp_path / "eurosat" / cls / f"{cls}_1.tif", "w", driver="GTiff", width=16, height=16, count=13,
                           dtype="uint16") as ds:
            ds.write(data)
    out = tmp_path / "eurosat.jsonl"
    assert run_cli("convert", "image-folder", tmp_path / "eurosat", "--bands", "4,3,2", "--out", out) == 0
    assert capsys.readouterr().out.startswith(f"wrote 2 samples from 2 images (0 objects) to {out}; skipped 0")
    samples = list(read_jsonl(out))
    assert [(s.answer, s.image.split("/")[-1]) for s in samples] == [("forest", "00000_forest_1.png"), ("river", "00001_river_1.png")]
    assert Image.open(samples[0].image).mode == "RGB"


def test_karpathy_captions_through_the_cli(tmp_path):
    write_png(tmp_path / "images" / "1.png")
    captions = tmp_path / "dataset_ucm.json"
    captions.write_text(json.dumps({"images": [{"filename": "1.png", "imgid": 0, "split": "train",
                                                "sentences": [{"raw": "A road.", "tokens": []}]}], "dataset": "ucm"}))
    out = tmp_path / "ucm.jsonl"
    assert run_cli("convert", "karpathy", captions, "--out", out) == 0
    assert [s.answer for s in read_jsonl(out)] == ["A road."]
