"""A real 2-process CPU (gloo) run through `accelerate launch`: both ranks end with the same weights."""
from __future__ import annotations

import json
import subprocess

import pytest

from _train_data import accelerate_launch, write_config, write_toy_dataset

# Runs on every rank: train stage 1 then stage 2, and record what this rank ended with.
RANK_SCRIPT = '''
import hashlib, json, sys
from pathlib import Path
from accelerate import PartialState
from skymoe.train.config import load_config
from skymoe.train import train

config1, config2, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
report = {}
s1 = train(load_config(config1), out / "s1")
s2 = train(load_config(config2, [f"model.init_from={out / 's1'}"]), out / "s2")
rank = PartialState().process_index
for name, result in (("stage1", s1), ("stage2", s2)):
    digest = hashlib.sha256()
    for key, tensor in sorted(result.model.state_dict().items()):
        digest.update(key.encode()); digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    report[name] = {"weights": digest.hexdigest(), "steps": result.steps, "samples": result.samples_seen}
report["tokenizer"] = hashlib.sha256((out / "s1" / "model" / "tokenizer.json").read_bytes()).hexdigest()
(out / f"rank{rank}.json").write_text(json.dumps(report))
'''


@pytest.mark.slow
def test_two_gloo_processes_agree_on_the_weights(tmp_path):
    data = write_toy_dataset(tmp_path / "toy")
    config1 = write_config(tmp_path / "s1.yaml", data, max_steps=3, log_every=1, checkpoint_every=2)
    config2 = write_config(tmp_path / "s2.yaml", data, stage=2, max_steps=2, log_every=1, checkpoint_every=2)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    done = subprocess.run(**accelerate_launch("cpu_ddp.yaml", script, config1, config2, tmp_path / "out"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    # each step consumed one batch on each process
    assert rank0["stage1"] == {**rank0["stage1"], "steps": 3, "samples": 3 * 4 * 2}
    metrics = [json.loads(line) for line in (tmp_path / "out" / "s2" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]  # written once, by the main process
