"""lmms-eval integration: entry-point registration, a real `lmms-eval` run on a tiny model, loglikelihood."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _eval_helpers import save_tiny_model

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is installed by the test set-up (see Makefile)")

TASKS_DIR = Path(__file__).resolve().parents[1] / "src" / "skymoe" / "eval" / "lmms_tasks"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, real_assets):
    return save_tiny_model(tmp_path_factory.mktemp("lmms") / "tiny")


def test_entry_point_resolves_to_the_skymoe_model():
    from lmms_eval.api.model import lmms
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert issubclass(registry.get_model_class("skymoe"), lmms)


def test_lmms_eval_cli_runs_offline_and_answers_like_skymoe(tiny_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = tmp_path / "out"
    cmd = [
        str(Path(sys.executable).with_name("lmms-eval")), "--model", "skymoe", "--model_args", f"pretrained={tiny_model_dir}",
        "--tasks", "skymoe_rsvqa_lr,skymoe_rsvqa_hr_phili", "--include_path", str(TASKS_DIR), "--limit", "4",
        "--batch_size", "1", "--log_samples", "--output_path", str(out),
    ]  # fmt: skip
    run = subprocess.run(cmd, check=False, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    found = list(out.rglob("*results.json"))  # lmms-eval exits 0 even when evaluation fails: check its output
    assert run.returncode == 0 and found, run.stderr[-3000:]
    results = json.loads(found[0].read_text())["results"]
    assert set(results) == {"skymoe_rsvqa_lr", "skymoe_rsvqa_hr_phili"}
    assert 0.0 <= results["skymoe_rsvqa_lr"]["overall_accuracy,none"] <= 1.0

    # lmms-eval's answers are exactly SkyMoE's own greedy answers to the same questions
    from skymoe.data.datasets import load_dataset
    from skymoe.eval.predict import generate_batch
    from skymoe.model.generation import load_model
    from skymoe.eval.suite import parse_suite

    logged = [json.loads(line) for line in next(out.rglob("*skymoe_rsvqa_lr*.jsonl")).read_text().splitlines()]
    assert len(logged) == 4
    model, processor = load_model(tiny_model_dir)
    suite = parse_suite({"datasets": [{"name": "rsvqa_lr", "splits": ["test"]}], "generation": {"max_new_tokens": 16}}, check_data=False)
    samples = load_dataset("rsvqa_lr", "test")
    for entry in logged:
        ours = generate_batch(model, processor, [samples[entry["doc_id"]]], suite)[0].prediction
        logged_answer = entry["filtered_resps"]  # a string in lmms-eval 0.7 logs, a one-item list in older ones
        logged_answer = logged_answer[0] if isinstance(logged_answer, list) else logged_answer
        assert logged_answer == ours.split("\n")[0].strip()


def test_loglikelihood_follows_the_chain_rule(tiny_model_dir):
    from lmms_eval.api.instance import Instance

    from skymoe.data.datasets import load_dataset
    from skymoe.eval.lmms_plugin import SkyMoE

    lm = SkyMoE(pretrained=str(tiny_model_dir), batch_size=1)
    sample = load_dataset("rsvqa_lr", "test")[0]
    lm.task_dict = {"t": {"test": [{"image": sample.image}]}}

    def request(continuation):
        args = (sample.question, continuation, lambda d: [d["image"]], 0, "t", "test")
        return Instance("loglikelihood", args, 0, {"task": "t", "doc_id": 0, "repeats": 1})

    (short, short_greedy), (longer, _) = lm.loglikelihood([request("rural"), request("rural area")])
    # log p("rural area") = log p("rural") + log p(" area" | "rural") < log p("rural") < 0
    assert longer < short < 0.0
    assert isinstance(short_greedy, bool)
