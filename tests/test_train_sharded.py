"""Sharded training through accelerate on 2 CPU processes (gloo): FSDP2, and DeepSpeed ZeRO-2 when installed.

Stage 1 and stage 2 (MoE) with activation checkpointing on. One DDP launch of the same seed and data is
the reference: per-step losses must agree, the sharded checkpoints must verify, the gathered model must
load in one process with the same outputs, and a run killed mid-training and resumed must end
bit-identical to the uninterrupted one. The ranks of DDP (and ZeRO-2) keep whole replicas: both end with
the same weights. (ZeRO-3 does not run with this model yet: docs/TRAINING.md.)
"""
from __future__ import annotations

import importlib.util
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
from _train_data import accelerate_launch, write_config, write_toy_dataset
from skymoe.train import checkpoint as ckpt

STEPS = 20
# fp32 everywhere; DDP all-reduces whole gradients, FSDP/ZeRO reduce-scatter shards: the sums differ in
# order only. Measured over 20 steps: at most 9e-8 relative (FSDP, stage 2); 1e-5 leaves 100x room.
LOSS_RTOL = 1e-5

FSDP, ZERO2 = "fsdp_cpu.yaml", "deepspeed_zero2_cpu.yaml"
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed not installed (scripts/install_test_tools.sh installs it)"
)
LAUNCHERS = [pytest.param(FSDP, id="fsdp"), pytest.param(ZERO2, id="zero2", marks=needs_deepspeed)]
# what each process writes into a checkpoint: its own shard of the weights and/or optimiser state
SHARD_FILES = {
    FSDP: [f"{part}/__{rank}_0.distcp" for part in ("pytorch_model_fsdp_0", "optimizer_0") for rank in (0, 1)],
    ZERO2: ["pytorch_model/mp_rank_00_model_states.pt"]
    + [f"pytorch_model/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)],
}

# Runs on every rank: stage 1, stage 2 from it, one eval forward of the trained (sharded) model, and what
# this rank ended with (where ranks hold replicas).
RANK_SCRIPT = '''
import gc, hashlib, json, sys, torch
from pathlib import Path
from accelerate import PartialState
from accelerate.utils import DistributedType
from skymoe.train.config import load_config
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
        "stage1": s1.loss_history, "stage2": s2.loss_history, "processes": PartialState().num_processes,
        "distributed_type": str(PartialState().distributed_type), "model_class": type(model).__name__,
        "checkpointed_modules": sum(bool(getattr(m, "gradient_checkpointing", False)) for m in model.modules()),
    }))
if PartialState().distributed_type != DistributedType.FSDP:  # FSDP ranks hold shards, not replicas
    report = {}
    for name, result in (("stage1", s1), ("stage2", s2)):
        digest = hashlib.sha256()
        for key, tensor in sorted(result.model.state_dict().items()):
            digest.update(key.encode()); digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        report[name] = {"weights": digest.hexdigest(), "steps": result.steps, "samples": result.samples_seen}
    report["tokenizer"] = hashlib.sha256((out / "s1" / "model" / "tokenizer.json").read_bytes()).hexdigest()
    (out / f"rank{PartialState().process_index}.json").write_text(json.dumps(report))
torch.distributed.barrier()
torch.distributed.destroy_process_group()  # as `skymoe train` does: a live group at exit can abort the rank (exit -6)
gc.freeze()  # the exit's garbage collections over all of torch + transformers take seconds; the OS frees it all anyway
'''


def _launch(config_name: str, *args) -> subprocess.CompletedProcess:
    done = subprocess.run(**accelerate_launch(config_name, *args), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs(launch config) -> output folder of one stage-1 + stage-2 launch (each launched once per module)."""
    root = tmp_path_factory.mktemp("sharded")
    data = write_toy_dataset(root / "toy")
    common = {"max_steps": STEPS, "log_every": 1, "checkpoint_every": 5, "activation_checkpointing": True}
    configs = write_config(root / "s1.yaml", data, **common), write_config(root / "s2.yaml", data, stage=2, **common)
    script = root / "rank.py"
    script.write_text(RANK_SCRIPT)
    done: dict[str, Path] = {}

    def run(config_name: str) -> Path:
        if config_name not in done:
            out = root / config_name.removesuffix(".yaml")
            _launch(config_name, script, *configs, out, Path(__file__).resolve().parent)
            done[config_name] = out
        return done[config_name]

    run.configs = configs
    return run


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_losses_equal_ddp_losses_over_both_stages(runs, launcher):
    ddp, sharded = _report(runs("cpu_ddp.yaml")), _report(runs(launcher))
    assert ddp["distributed_type"] == "DistributedType.MULTI_CPU" and ddp["processes"] == sharded["processes"] == 2
    assert sharded["distributed_type"] == {FSDP: "DistributedType.FSDP", ZERO2: "DistributedType.DEEPSPEED"}[launcher]
    if launcher == FSDP:
        assert sharded["model_class"].startswith("FSDP")  # fully_shard really wrapped it
    assert sharded["checkpointed_modules"] > 0 and ddp["checkpointed_modules"] > 0
    for stage in ("stage1", "stage2"):
        assert [s for s, _ in sharded[stage]] == [s for s, _ in ddp[stage]] == list(range(1, STEPS + 1))
        expected, actual = torch.tensor([v for _, v in ddp[stage]]), torch.tensor([v for _, v in sharded[stage]])
        torch.testing.assert_close(actual, expected, rtol=LOSS_RTOL, atol=0.0, msg=f"{stage}: {launcher} vs DDP losses")
    assert sharded["stage1"][-1][1] < sharded["stage1"][0][1] - 1.0  # it trained (stage 2 starts near its floor)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [pytest.param("cpu_ddp.yaml", id="ddp"), *LAUNCHERS[1:]])  # FSDP ranks hold shards
def test_both_processes_end_with_the_same_weights(runs, launcher):
    rank0, rank1 = (json.loads((runs(launcher) / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    # each step consumed one batch on each process
    assert rank0["stage1"] == {**rank0["stage1"], "steps": STEPS, "samples": STEPS * 4 * 2}
    metrics = [json.loads(line) for line in (runs(launcher) / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # written once, by the main process


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_checkpoints_hold_one_shard_per_process_and_verify(runs, launcher):
    root = runs(launcher) / "s2" / "checkpoints"
    checkpoints = ckpt.list_checkpoints(root)
    assert [p.name for p in checkpoints] == [ckpt.checkpoint_name(15), ckpt.checkpoint_name(20)]  # keep_last=2
    for folder in checkpoints:
        assert ckpt.verify_checkpoint(folder) is None
        files = set(json.loads((folder / ckpt.MANIFEST).read_text())["files"])
        assert set(SHARD_FILES[launcher]) <= files
        assert "model.safetensors" not in files  # the weights are not gathered into one file per checkpoint
    assert not list(root.glob(".tmp-*"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_the_model_folder_loads_in_one_process_with_the_same_outputs(runs, launcher):
    from skymoe.model.modeling import SkyMoEForConditionalGeneration

    out = runs(launcher)
    model = SkyMoEForConditionalGeneration.from_pretrained(out / "s2" / "model").eval()
    assert model.num_experts == 4
    with torch.no_grad():
        logits = model(**make_batch(model.config)).logits
    torch.testing.assert_close(logits, torch.load(out / "logits.pt"), rtol=1e-5, atol=1e-5)
    # and the gathered weights are the DDP run's, up to the same summation-order noise
    a, b = load_file(out / "s2" / "model" / "model.safetensors"), load_file(runs("cpu_ddp.yaml") / "s2" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)


def _kill_all(process: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank at once, as a lost node would (torchrun gives each rank its own session)."""
    for p in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
        p.send_signal(signal.SIGKILL)
    process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_killed_then_resumed_is_bit_identical(runs, launcher, tmp_path):
    full = runs(launcher) / "s2"
    train = ["-m", "skymoe", "train", "--config", runs.configs[1], "--output", tmp_path / "killed"]
    init = f"model.init_from={full.parent / 's1'}"
    killed = subprocess.Popen(**accelerate_launch(launcher, *train, init), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = tmp_path / "killed" / "checkpoints" / ckpt.checkpoint_name(5)
    deadline = time.monotonic() + 300
    while not first.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    _kill_all(killed)
    assert first.exists(), killed.stdout.read()[-3000:]
    assert not (tmp_path / "killed" / "model").exists()  # it really died mid-training

    done = _launch(launcher, *train, "--resume", init)
    log = done.stdout + done.stderr
    assert "resumed from" in log and ckpt.checkpoint_name(STEPS) not in log.split("resumed from")[1].splitlines()[0]
    a, b = load_file(full / "model" / "model.safetensors"), load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
