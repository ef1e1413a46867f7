"""FSDP2 through accelerate on 2 CPU processes (gloo), stage 1 and stage 2 (MoE), activation checkpointing on.

One DDP launch and one FSDP launch of the same seed and data give the reference: per-step losses must
agree, the sharded checkpoints must verify, the gathered model must load in one process with the same
outputs, and an FSDP run killed mid-training and resumed must end bit-identical to the uninterrupted one.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from _model_helpers import make_batch
from _train_data import accelerate_launch, one_torch_thread, write_config, write_toy_dataset  # noqa: F401 (autouse fixture)
from skymoe.train import checkpoint as ckpt

STEPS = 20
# fp32 on both sides; DDP all-reduces whole gradients, FSDP reduce-scatters shards: the sums differ in
# order only. Measured over 20 steps: at most 9e-8 relative (stage 2); 1e-5 leaves 100x room.
LOSS_RTOL = 1e-5

# Runs on every rank: stage 1, stage 2 from it, then one eval forward of the trained (sharded) model.
RANK_SCRIPT = '''
import json, sys, torch
from pathlib import Path
from accelerate import PartialState
from skymoe.config import load_config
from skymoe.train import train

config1, config2, out, tests = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
sys.path.insert(0, tests)
from _model_helpers import make_batch

s1 = train(load_config(config1), out / "s1")
s2 = train(load_config(config2, [f"model.init_from={out / 's1'}"]), out / "s2")
model = s2.model.eval()
with torch.no_grad():  # every rank takes part: FSDP all-gathers each layer's shards
    logits = model(**make_batch(model.config)).logits
if PartialState().is_main_process:
    torch.save(logits, out / "logits.pt")
    (out / "report.json").write_text(json.dumps({
        "stage1": s1.loss_history, "stage2": s2.loss_history, "model_class": type(model).__name__,
        "checkpointed_modules": sum(bool(getattr(m, "gradient_checkpointing", False)) for m in model.modules()),
    }))
'''


def _configs(folder: Path) -> tuple[Path, Path]:
    data = write_toy_dataset(folder / "toy")
    common = {"max_steps": STEPS, "log_every": 1, "checkpoint_every": 5, "activation_checkpointing": True}
    return write_config(folder / "s1.yaml", data, **common), write_config(folder / "s2.yaml", data, stage=2, **common)


def _launch(config_name: str, *args) -> subprocess.CompletedProcess:
    command, env = accelerate_launch(config_name, *args)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """{"configs": (stage 1, stage 2), "ddp"/"fsdp": output folder} of one launch each."""
    root = tmp_path_factory.mktemp("fsdp")
    configs = _configs(root)
    script = root / "rank.py"
    script.write_text(RANK_SCRIPT)
    tests = Path(__file__).resolve().parent
    result = {"configs": configs}
    for kind, launch_config in (("ddp", "cpu_ddp.yaml"), ("fsdp", "fsdp_cpu.yaml")):
        _launch(launch_config, script, *configs, root / kind, tests)
        result[kind] = root / kind
    return result


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


@pytest.mark.slow
def test_fsdp_losses_equal_ddp_losses_over_both_stages(runs):
    ddp, fsdp = _report(runs["ddp"]), _report(runs["fsdp"])
    assert fsdp["model_class"].startswith("FSDP") and not ddp["model_class"].startswith("FSDP")  # really sharded
    assert fsdp["checkpointed_modules"] > 0 and ddp["checkpointed_modules"] > 0
    for stage in ("stage1", "stage2"):
        assert [s for s, _ in fsdp[stage]] == list(range(1, STEPS + 1))
        assert [s for s, _ in ddp[stage]] == list(range(1, STEPS + 1))
        ddp_loss, fsdp_loss = torch.tensor([v for _, v in ddp[stage]]), torch.tensor([v for _, v in fsdp[stage]])
        torch.testing.assert_close(fsdp_loss, ddp_loss, rtol=LOSS_RTOL, atol=0.0, msg=f"{stage}: FSDP vs DDP losses")
    assert fsdp["stage1"][-1][1] < fsdp["stage1"][0][1] - 1.0  # it trained (stage 2 starts near its floor)


@pytest.mark.slow
def test_fsdp_checkpoints_are_sharded_and_verified(runs):
    checkpoints = ckpt.list_checkpoints(runs["fsdp"] / "s2" / "checkpoints")
    assert [p.name for p in checkpoints] == [ckpt.checkpoint_name(15), ckpt.checkpoint_name(20)]  # keep_last=2
    for folder in checkpoints:
        assert ckpt.verify_checkpoint(folder) is None
        files = set(json.loads((folder / ckpt.MANIFEST).read_text())["files"])
        # one distributed-checkpoint shard per process, for the weights and the optimiser state
        for part in ("pytorch_model_fsdp_0", "optimizer_0"):
            assert {f"{part}/__0_0.distcp", f"{part}/__1_0.distcp", f"{part}/.metadata"} <= files
        assert "model.safetensors" not in files  # not gathered into one file
    assert not list((runs["fsdp"] / "s2" / "checkpoints").glob(".tmp-*"))


@pytest.mark.slow
def test_the_fsdp_model_folder_loads_in_one_process_with_the_same_outputs(runs):
    from skymoe.model.modeling import SkyMoEForConditionalGeneration

    model = SkyMoEForConditionalGeneration.from_pretrained(runs["fsdp"] / "s2" / "model").eval()
    assert model.num_experts == 4
    with torch.no_grad():
        logits = model(**make_batch(model.config)).logits
    torch.testing.assert_close(logits, torch.load(runs["fsdp"] / "logits.pt"), rtol=1e-5, atol=1e-5)
    # and the gathered weights are the DDP run's, up to the same summation-order noise
    a, b = load_file(runs["fsdp"] / "s2" / "model" / "model.safetensors"), load_file(runs["ddp"] / "s2" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.slow
def test_fsdp_run_killed_then_resumed_is_bit_identical(runs, tmp_path):
    _, config2 = runs["configs"]
    init = f"model.init_from={runs['fsdp'] / 's1'}"
    out = tmp_path / "killed"
    command, env = accelerate_launch("fsdp_cpu.yaml", "-m", "skymoe", "train", "--config", config2, "--output", out, init)
    killed = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / "checkpoints" / ckpt.checkpoint_name(5)
    deadline = time.monotonic() + 300
    while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    # torchrun starts each rank in a session of its own: SIGKILL the launcher and every rank, as a lost node would
    for process in [*psutil.Process(killed.pid).children(recursive=True), psutil.Process(killed.pid)]:
        process.send_signal(signal.SIGKILL)
    killed.wait()
    assert first.exists(), killed.stdout.read()[-3000:]
    assert not (out / "model").exists()  # it really died mid-training

    command, env = accelerate_launch("fsdp_cpu.yaml", "-m", "skymoe", "train", "--config", config2, "--output", out, "--resume", init)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "resumed from" in log and ckpt.checkpoint_name(STEPS) not in log.split("resumed from")[1].splitlines()[0]
    full, resumed = load_file(runs["fsdp"] / "s2" / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert full.keys() == resumed.keys()
    different = [k for k in full if not torch.equal(full[k], resumed[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
