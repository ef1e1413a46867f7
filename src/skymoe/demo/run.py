"""`skymoe demo`: the whole system on the embedded real data, in minutes on a CPU.

assets → honest splits → stage 1 (dense) → stage 2 (upcycled MoE) → `skymoe eval`
of both models on held-out questions → one HTML + Markdown report. Every number
in the report is read from files the steps wrote (train summaries, metrics.jsonl,
metrics.json), never typed.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from skymoe.demo.splits import DemoSplits, build_demo_splits

# What a demo run writes under its --out folder; a new run replaces them.
RUN_FOLDERS = ("data", "stage1", "stage2", "eval_stage1", "eval_stage2")
DEMO_ASSETS = ["rsvqa_lr", "rsvqa_hr", "hrvqa", "bigearthnet", "efficientnet-lite0"]
GEMMA_ASSET = "gemma3-270m"
REAL_DATA_WEIGHT = 3.0  # draws per epoch of each real training sample (MGRS-mini: 1)


@dataclass(frozen=True)
class Budget:
    """How much work a run does. Steps scale linearly with ``--minutes``."""

    stage1_steps: int
    stage2_steps: int
    mgrs_train: int
    eval_limit: int  # MGRS-mini held-out samples
    real_eval_limit: int | None = None  # real held-out samples per dataset and set; None = all

    @classmethod
    def for_minutes(cls, minutes: float) -> "Budget":
        # Calibrated on an idle 2-core CPU (~95 samples/s at batch 16 in both stages): the default 8
        # minutes train for ~5 and leave margin under the 10-minute goal for slower machines; fixed
        # costs (assets, data, two evaluations of ~1,500 held-out samples, report) are ~1-2 minutes.
        scale = max(minutes - 2.0, 0.5) / 6.0
        return cls(
            stage1_steps=max(10, round(1000 * scale)),
            stage2_steps=max(10, round(600 * scale)),
            mgrs_train=max(200, round(3000 * scale)),
            eval_limit=150 if minutes <= 10 else 400,  # MGRS-mini; the real held-out sets are used whole
        )

    @classmethod
    def smoke(cls) -> "Budget":
        return cls(stage1_steps=3, stage2_steps=3, mgrs_train=40, eval_limit=4, real_eval_limit=4)


def _packaged_config(name: str) -> dict:
    return yaml.safe_load((resources.files("skymoe.demo") / name).read_text(encoding="utf-8"))


def stage_configs(data_dir: Path, stage1_dir: Path, budget: Budget, seed: int, llm: str):
    """The two TrainConfigs of the demo: packaged YAML + this run's data, steps, seed."""
    from skymoe.config import TrainConfig, from_dict

    # The real questions are ~1/3 of the training samples; weighted up they are ~4/7 of the draws, so most
    # steps go to the data the report is about while MGRS-mini still teaches the other tasks (x6 starved
    # MGRS-mini below its prior baseline for no gain on unseen real images).
    mix = [{"path": str(data_dir / "train_real.jsonl"), "weight": REAL_DATA_WEIGHT},
           {"path": str(data_dir / "train_synthetic.jsonl"), "weight": 1.0}]
    raw1, raw2 = _packaged_config("stage1.yaml"), _packaged_config("stage2.yaml")
    for raw, steps in ((raw1, budget.stage1_steps), (raw2, budget.stage2_steps)):
        raw["data"]["mix"] = mix
        raw["max_steps"] = steps
        raw["seed"] = seed
    raw2["model"]["init_from"] = str(stage1_dir)
    if llm == GEMMA_ASSET:
        # A pretrained LM is the frozen base of a dense LoRA adapter, then of the LoRA experts.
        # Its 262k-token vocabulary makes a step ~30x dearer than the tiny LM's: smaller batches, fewer steps.
        raw1["model"].update(llm=GEMMA_ASSET, adapter="lora")
        for raw in (raw1, raw2):
            raw["batch_size"] = 4
            raw["max_steps"] = max(3, raw["max_steps"] // 10)
    return from_dict(TrainConfig, raw1).validate(), from_dict(TrainConfig, raw2).validate()


def write_suite(data_dir: Path, budget: Budget) -> Path:
    """An eval suite over the two held-out files; the prior baseline is fitted on the demo's train split."""
    suite = {
        "name": "demo-heldout",
        "description": "Held-out questions of the demo: unseen images, and unseen questions of seen images.",
        "generation": {"max_new_tokens": 24, "batch_size": 16},
        "baseline_path": "train.jsonl",
        "datasets": [{"path": "unseen_images.jsonl"}, {"path": "unseen_questions.jsonl"}],
    }
    path = data_dir / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return path


def prepare_data(data_dir: Path, budget: Budget, seed: int) -> DemoSplits:
    splits = build_demo_splits(seed=seed, mgrs_train=budget.mgrs_train, eval_limit=budget.eval_limit,
                               real_eval_limit=budget.real_eval_limit)
    # The held-out sets are told apart in every metrics table by their split name.
    for sample in splits.unseen_images:
        sample.split = "unseen-images"
    for sample in splits.unseen_questions:
        sample.split = "unseen-questions"
    splits.write(data_dir)
    return splits


def run_demo(out_dir: str | Path = "out/demo", *, minutes: float = 8.0, seed: int = 0, smoke: bool = False, llm: str = "tiny") -> Path:
    """Run the demo; returns the path of report.html."""
    from skymoe.assets import fetch_assets
    from skymoe.demo.report import write_demo_report
    from skymoe.eval import evaluate
    from skymoe.train import train

    out_dir = Path(out_dir)
    for folder in RUN_FOLDERS:
        shutil.rmtree(out_dir / folder, ignore_errors=True)
    data_dir = out_dir / "data"
    budget = Budget.smoke() if smoke else Budget.for_minutes(minutes)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = time.perf_counter() - t0
        return time.perf_counter()

    t = time.perf_counter()
    fetch_assets(DEMO_ASSETS + ([GEMMA_ASSET] if llm == GEMMA_ASSET else []))
    splits = prepare_data(data_dir, budget, seed)
    suite = write_suite(data_dir, budget)
    t = lap("assets and data", t)

    cfg1, cfg2 = stage_configs(data_dir, out_dir / "stage1", budget, seed, llm)
    stage1 = train(cfg1, out_dir / "stage1")
    t = lap("stage 1 training", t)
    stage2 = train(cfg2, out_dir / "stage2")
    t = lap("stage 2 training", t)

    evaluate(stage1.model_dir, suite, out_dir / "eval_stage1")
    evaluate(stage2.model_dir, suite, out_dir / "eval_stage2")
    t = lap("evaluation (both models)", t)

    timings["total"] = time.perf_counter() - start
    run = {
        "seed": seed,
        "minutes": None if smoke else minutes,
        "smoke": smoke,
        "llm": llm,
        "budget": budget.__dict__,
        "data": splits.counts(),
        "timings_s": timings,
        "stage1": stage1.summary(),
        "stage2": stage2.summary(),
    }
    (out_dir / "demo_run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return write_demo_report(out_dir, run)
