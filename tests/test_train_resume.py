"""Resume is exact: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

from _train_data import SUBPROCESS_ENV, write_config, write_toy_dataset
from skymoe.train.config import load_config
from skymoe.train import train
from skymoe.train.checkpoint import CheckpointWarning

STEPS = 60


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


def skymoe_train(*args) -> subprocess.Popen:
    env = {**os.environ, **SUBPROCESS_ENV}
    return subprocess.Popen([sys.executable, "-m", "skymoe", "train", *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_same_weights(dir_a, dir_b):
    a, b = load_file(dir_a / "model" / "model.safetensors"), load_file(dir_b / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_is_bit_identical(data, tmp_path):
    # CDA on: the resumed run must also reproduce every augmentation draw
    config = write_config(
        tmp_path / "c.yaml", data, max_steps=STEPS, checkpoint_every=10, log_every=10, cda={"enabled": True}
    )
    full = skymoe_train("--config", config, "--output", tmp_path / "full")
    killed = skymoe_train("--config", config, "--output", tmp_path / "killed")
    first = tmp_path / "killed" / "checkpoints" / "step-00000010"
    deadline = time.monotonic() + 300
    while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL, killed.stdout.read()
    assert not (tmp_path / "killed" / "model").exists()  # it really died mid-training
    assert full.wait() == 0, full.stdout.read()

    resumed = skymoe_train("--config", config, "--output", tmp_path / "killed", "--resume")
    log = resumed.communicate()[0]
    assert resumed.returncode == 0, log
    assert "resumed from" in log and f"step-{STEPS:08d}" not in log.split("resumed from")[1].splitlines()[0]
    assert_same_weights(tmp_path / "full", tmp_path / "killed")


class Died(Exception):
    """Stands in for the process dying right after a checkpoint write."""


def test_corrupt_newest_checkpoint_falls_back_and_still_matches(data, tmp_path, monkeypatch):
    import skymoe.train.trainer as trainer

    overrides = ["max_steps=12", "checkpoint_every=4", "keep_last=3", "cda.enabled=true", "grad_accum=2"]
    config = write_config(tmp_path / "c.yaml", data)
    train(load_config(config, overrides), tmp_path / "full")

    real_save = trainer.ckpt.save_checkpoint

    def save_then_die(accelerator, folder, step, *args, **kwargs):
        real_save(accelerator, folder, step, *args, **kwargs)
        if step == 8:
            raise Died

    monkeypatch.setattr(trainer.ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(Died):
        train(load_config(config, overrides), tmp_path / "cut")
    monkeypatch.undo()
    # the write of step 8 was torn: its weights are garbage
    (tmp_path / "cut" / "checkpoints" / "step-00000008" / "model.safetensors").write_bytes(b"\0" * 64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(load_config(config, overrides), tmp_path / "cut", resume=True)
    assert result.resumed_from.endswith("step-00000004")
    assert any(issubclass(w.category, CheckpointWarning) and "step-00000008" in str(w.message) for w in caught)
    assert_same_weights(tmp_path / "full", tmp_path / "cut")


def test_a_corrupt_checkpoint_resume_skipped_is_moved_aside_and_never_pruned_in_place_of_a_good_one(tmp_path):
    from skymoe.train import checkpoint as ckpt

    root = tmp_path / "checkpoints"
    for step in (35, 40):
        folder = root / ckpt.checkpoint_name(step)
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights" * 10)
        ckpt._write_manifest(folder, step)
    (root / "step-00000040" / "model.safetensors").write_bytes(b"weig")  # truncated
    with pytest.warns(CheckpointWarning, match=r"step-00000040: checksum mismatch .*moved it aside to .*\.corrupt-step-00000040"):
        assert ckpt.latest_good_checkpoint(root) == root / "step-00000035"
    assert (root / ".corrupt-step-00000040" / "model.safetensors").read_bytes() == b"weig"  # kept for inspection
    (root / "step-00000042").mkdir()  # the resumed run's next checkpoint
    ckpt.prune_checkpoints(root, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-00000035", "step-00000042"]


def test_with_no_good_checkpoint_the_corrupt_ones_stay_in_place(tmp_path):
    from skymoe.train import checkpoint as ckpt

    (tmp_path / "step-00000001").mkdir()  # no manifest: the write never finished
    with pytest.warns(CheckpointWarning, match="no older one verifies"):
        assert ckpt.latest_good_checkpoint(tmp_path) is None
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]
