"""A data.mix entry that names a label format trains from YAML alone; skymoe data check on JSONL and configs."""
from __future__ import annotations

import json
import re

import pytest
import yaml

from _convert_fixtures import run_cli, write_coco
from _train_data import write_config
from skymoe.errors import ConfigError
from skymoe.train.config import load_config
from skymoe.train import train


def coco_config(tmp_path, **entry):
    labels = write_coco(tmp_path / "coco")
    path = write_config(tmp_path / "c.yaml", labels, max_steps=3, log_every=1, checkpoint_every=3)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"] = {"mix": [{"format": "coco", "labels": str(labels), "tasks": ["grounding", "counting"], "weight": 1, **entry}],
                   "feature_cache": False}
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_coco_entry_trains_a_few_steps_from_yaml_only(tmp_path):
    result = train(load_config(coco_config(tmp_path)), tmp_path / "out")
    assert [step for step, _ in result.loss_history] == [1, 2, 3]


@pytest.mark.parametrize("change, message", [
    ({"labels": None}, "'data.mix[0].labels' is required with 'format'"),
    ({"tasks": ["captioning"]}, "'data.mix[0].tasks[]' must be one of"),
    ({"format": "kml"}, "'data.mix[0].format' must be one of"),
    ({"options": {"labelfield": "x"}}, "unknown keys ['labelfield'] under 'data.mix[0].options'"),
    ({"path": "x.jsonl"}, "'data.mix[0]' needs exactly one of 'name' (embedded dataset), 'path' (JSONL file) or 'format'"),
])
def test_a_format_entry_is_checked_when_the_config_loads(tmp_path, change, message):
    path = coco_config(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["mix"][0].update(change)
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_check_reports_every_bad_box_and_missing_image(tmp_path, capsys):
    out = tmp_path / "ok.jsonl"
    assert run_cli("convert", "coco", write_coco(tmp_path / "coco"), "--out", out) == 0
    assert run_cli("check", out) == 0
    assert capsys.readouterr().out.strip().endswith("11 samples, 2 images, 12 boxes checked: no errors")
    records = [json.loads(line) for line in out.read_text().splitlines()]
    records[0].update(image_size=None)  # no size recorded: only the image itself can tell the box is outside
    records[0]["boxes"][0]["xyxy"] = [50, 0, 70, 10]  # past the 64 px wide image
    records[1]["image_size"] = [64, 40]
    records[-1]["image"] = "../coco/missing.png"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in records) + "{not json\n")
    capsys.readouterr()
    assert run_cli("check", bad) == 1
    printed = capsys.readouterr().out
    assert "11 samples, 3 images, 12 boxes checked: 4 errors" in printed  # the malformed line is no sample
    assert "line 12: file" in printed and "malformed JSON" in printed and "records image_size [64, 40] but" in printed
    assert "lies outside the image of size 64x48" in printed and "missing.png: image file not found" in printed


def test_check_a_config_converts_its_format_entries(tmp_path, capsys):
    assert run_cli("check", coco_config(tmp_path)) == 0
    assert "samples, 2 images" in capsys.readouterr().out


def test_a_tiled_entry_writes_its_chips_once_into_the_cache(tmp_path, monkeypatch):
    from skymoe.data.convert.mix import load_format_entry

    monkeypatch.setenv("SKYMOE_CACHE", str(tmp_path / "cache"))
    spec = load_config(coco_config(tmp_path, tile=32, overlap=8)).data.mix[0]
    first = load_format_entry(spec)
    chip = first[0].image
    assert "/derived/convert/" in chip and chip.endswith("a_0_0.png")
    stamp = (tmp_path / chip).stat().st_mtime_ns
    again = load_format_entry(spec)
    assert [s.to_dict() for s in again] == [s.to_dict() for s in first] and (tmp_path / chip).stat().st_mtime_ns == stamp
