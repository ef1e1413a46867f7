"""`skymoe demo`: the whole system on the embedded real data, in minutes on a CPU.

assets → honest splits → stage 1 (dense) → stage 2 (upcycled MoE) → `skymoe eval`
of both models on held-out questions → one HTML + Markdown report. Every number
in the report is read from files the steps wrote (train summaries, metrics.jsonl,
metrics.json), never typed.
"""
from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from skymoe.demo.splits import HELDOUT_SOURCES, DemoSplits, build_demo_splits
from skymoe.model.gguf import GGUF_LLM_ASSETS

# What a demo run writes under its --out folder; a new run replaces them.
RUN_FOLDERS = ("data", "stage1", "blind", "stage2", "eval_stage1", "eval_blind", "eval_stage2")
DEMO_ASSETS = ["rsvqa_lr", "rsvqa_hr", "hrvqa", "bigearthnet", "neon_trees", "landsat_landcover", "efficientnet-lite0"]
# Share of the training draws that go to the real datasets (the rest: MGRS-mini, task-balanced). The real sets
# hold 7-8 training images each: more draws buy memorised answers, not image understanding.
REAL_DATA_SHARE = 0.2
# Each MGRS-mini task's share of the synthetic draws, relative to the others' 1. VQA and counting rest on finding the
# objects a question names (the evidence head's per-cell targets), and their cells learn with samples: doubled,
# they beat their controls on validation, but grounding (1) fell below its target; classification, well above its
# probe, gives some of its share; region captions, read through the zoom of their box, came closer to the prior
# at 1.5 (benchmarks/results/evidence_val/4-8, 11, 15; docs/LEARNING.md).
SYNTHETIC_TASK_WEIGHTS = {"vqa": 2.0, "counting": 2.0, "grounding": 1.5, "classification": 0.75, "region_caption": 1.5}
HELD_OUT = "unseen-images"  # the held-out set learning.json reports
# The packaged stage-1 / stage-2 configs of each recipe: SkyMoE (LoRA experts inside the LLM's FFNs, routed by the
# task-aware router) and RS-MoE (a Q-Former and lightweight expert LLMs, each with its own routing instruction).
RECIPES = {"skymoe": ("stage1.yaml", "stage2.yaml"), "rsmoe": ("rsmoe_stage1.yaml", "rsmoe_stage2.yaml")}


@dataclass(frozen=True)
class Budget:
    """How much work a run does. Training steps scale linearly with ``--minutes``."""

    stage1_steps: int  # the blind control trains as many
    stage2_steps: int
    mgrs_scenes: int  # MGRS-mini scenes generated (80% train, 10% test)
    eval_per_task: int  # MGRS-mini held-out samples per task
    real_eval_limit: int | None = None  # real held-out samples per dataset and set; None = all
    mgrs_train: int | None = None  # MGRS-mini training samples kept (seeded); None = all
    compile: bool = True  # as the recipe's configs say; off: a compile would not pay back over a smoke run's steps

    @classmethod
    def for_minutes(cls, minutes: float) -> "Budget":
        # Calibrated on an idle 2-core CPU (docs/LEARNING.md): fixed costs (assets, MGRS-mini, one tower pass
        # over every image, three evaluations, probes, report) take ~FIXED_MINUTES; the rest trains stage 1,
        # the blind control (as many steps as stage 1) and stage 2 at ~STEPS_PER_MINUTE steps of 32 samples.
        train_minutes = max(minutes - FIXED_MINUTES, 0.5)
        steps = train_minutes * STEPS_PER_MINUTE
        return cls(
            stage1_steps=max(10, round(steps * STAGE1_SHARE)),
            stage2_steps=max(10, round(steps * (1 - 2 * STAGE1_SHARE))),
            mgrs_scenes=MGRS_SCENES,
            eval_per_task=EVAL_PER_TASK,
        )

    @classmethod
    def smoke(cls) -> "Budget":
        # 3 steps of 32 read ~100 samples: the whole 1000-scene train split (11.7k) only adds data checks, feature
        # caching and baseline fitting (52 s -> 31 s on a busy 2-core machine); 300 still fit the classification and counting probes
        return cls(stage1_steps=3, stage2_steps=3, mgrs_scenes=1000, eval_per_task=4, real_eval_limit=4, mgrs_train=300,
                   compile=False)


FIXED_MINUTES = 2.1  # measured with 8x8 tokens and the NEON/Landsat rows (docs/LEARNING.md, Budget)
STEPS_PER_MINUTE = 240  # 8x8 visual tokens, measured by an idle `skymoe demo` (demo_run.json); re-measure after a recipe change
STAGE1_SHARE = 0.375  # of the training steps; the blind control takes as many, stage 2 the rest
MGRS_SCENES = 3000
# MGRS-mini held-out samples per task: a 95% interval of an accuracy near 0.45 is about +-0.06 wide at 250, +-0.045
# at 500. Captions, classification and grounding have one per scene, so they keep all 300 held-out scenes' (~20 s
# more evaluation than at 250).
EVAL_PER_TASK = 500


def packaged_config(name: str) -> dict:
    return yaml.safe_load((resources.files("skymoe.demo") / name).read_text(encoding="utf-8"))


def stage_configs(data_dir: Path, stage1_dir: Path, budget: Budget, seed: int, llm: str, recipe: str = "skymoe"):
    """The demo's TrainConfigs (stage 1, the blind control, stage 2): the recipe's packaged YAML + this run's data,
    steps and seed."""
    from skymoe.train.config import parse_config

    real = sum(1 for _ in (data_dir / "train_real.jsonl").open(encoding="utf-8"))
    synthetic = sum(1 for _ in (data_dir / "train_synthetic.jsonl").open(encoding="utf-8"))
    # Task-balanced within the real share too: BigEarthNet's 10 multilabel samples drawn at their size's share
    # (0.2% of the draws) left the router at 0.0 accuracy on multilabel prompts (a validation demo, docs/LEARNING.md).
    mix = [{"path": str(data_dir / "train_real.jsonl"), "weight": REAL_DATA_SHARE / (1 - REAL_DATA_SHARE) * synthetic / real,
            "balance": "task"},
           {"path": str(data_dir / "train_synthetic.jsonl"), "weight": 1.0, "balance": "task",
            "task_weights": SYNTHETIC_TASK_WEIGHTS}]
    if recipe not in RECIPES:
        raise ValueError(f"unknown demo recipe {recipe!r}; expected one of {sorted(RECIPES)}")
    raw1, raw2 = (packaged_config(name) for name in RECIPES[recipe])
    for raw, steps in ((raw1, budget.stage1_steps), (raw2, budget.stage2_steps)):
        raw["data"]["mix"] = mix
        raw["max_steps"] = steps
        raw["seed"] = seed
        raw["compile"] = raw.get("compile", False) and budget.compile
    raw2["model"]["init_from"] = str(stage1_dir)
    if llm in GGUF_LLM_ASSETS:
        # A pretrained LM is the frozen base of a dense LoRA adapter, then of the LoRA experts.
        # Gemma's 262k-token vocabulary makes a step ~30x dearer than the tiny LM's, and SmolLM2's 30 layers
        # cost ~25 s per step of 4 on 2 busy cores: smaller batches, fewer steps.
        raw1["model"]["llm"]["pretrained"] = llm
        raw1["model"]["moe"]["dense_lora"] = True
        for raw in (raw1, raw2):
            raw["batch_size"] = 4
            raw["max_steps"] = max(3, raw["max_steps"] // 10)
            raw["compile"] = False  # a compile would not pay back over so few steps
    blind = copy.deepcopy(raw1)
    blind["data"]["blind"] = True
    return tuple(parse_config(raw) for raw in (raw1, blind, raw2))


def write_suite(data_dir: Path, budget: Budget) -> Path:
    """An eval suite over the two held-out files; the prior baseline is fitted on the demo's train split."""
    suite = {
        "name": "demo-heldout",
        "description": "Held-out questions of the demo: unseen images, and unseen questions of seen images.",
        "generation": {"max_new_tokens": 24, "batch_size": 64},
        "baseline_path": "train.jsonl",
        "datasets": [{"path": "unseen_images.jsonl"}, {"path": "unseen_questions.jsonl"}],
    }
    path = data_dir / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return path


def prepare_data(data_dir: Path, budget: Budget, seed: int, heldout: str = "test") -> DemoSplits:
    splits = build_demo_splits(seed=seed, mgrs_scenes=budget.mgrs_scenes, mgrs_train=budget.mgrs_train,
                               eval_per_task=budget.eval_per_task, real_eval_limit=budget.real_eval_limit,
                               datasets=HELDOUT_SOURCES[heldout])
    # The held-out sets are told apart in every metrics table by their split name.
    for sample in splits.unseen_images:
        sample.split = "unseen-images"
    for sample in splits.unseen_questions:
        sample.split = "unseen-questions"
    splits.write(data_dir)
    return splits


def write_learning_controls(out_dir: Path, splits: DemoSplits, model_dir: str) -> dict:
    """learning.json (+ plot and table): the three models' held-out predictions beside the prior and the probes."""
    from skymoe.eval.controls import learning_controls, write_learning
    from skymoe.eval.records import read_predictions, write_predictions
    from skymoe.eval.runner import probe_records
    from skymoe.model.feature_source import feature_source
    from skymoe.model.generation import load_model

    models = {name: read_predictions(out_dir / folder / "predictions.jsonl")
              for name, folder in (("dense", "eval_stage1"), ("blind", "eval_blind"), ("moe", "eval_stage2"))}
    model, processor = load_model(model_dir)
    probed = probe_records(splits.train, splits.unseen_images, feature_source(model, processor))
    write_predictions(probed, out_dir / "predictions_probe.jsonl")
    learning = learning_controls(models, probed, split=HELD_OUT)
    write_learning(learning, out_dir)
    return learning


def run_demo(out_dir: str | Path = "out/demo", *, minutes: float = 9.5, seed: int = 0, smoke: bool = False,
             llm: str = "tiny", heldout: str = "test", recipe: str = "skymoe") -> Path:
    """Run the demo; returns the path of report.html. ``heldout="val"`` holds out the validation splits instead of
    the test splits, and never reads the latter: what a recipe change is tuned on. ``recipe`` names the packaged
    configs trained (:data:`RECIPES`)."""
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
    fetch_assets(DEMO_ASSETS + ([llm] if llm in GGUF_LLM_ASSETS else []))
    splits = prepare_data(data_dir, budget, seed, heldout)
    suite = write_suite(data_dir, budget)
    t = lap("assets and data", t)

    cfg1, cfg_blind, cfg2 = stage_configs(data_dir, out_dir / "stage1", budget, seed, llm, recipe)
    stage1 = train(cfg1, out_dir / "stage1")
    t = lap("stage 1 training", t)
    blind = train(cfg_blind, out_dir / "blind")
    t = lap("blind control training", t)
    stage2 = train(cfg2, out_dir / "stage2")
    t = lap("stage 2 training", t)

    for result, folder in ((stage1, "eval_stage1"), (blind, "eval_blind"), (stage2, "eval_stage2")):
        evaluate(result.model_dir, suite, out_dir / folder)
    t = lap("evaluation (three models)", t)
    write_learning_controls(out_dir, splits, stage2.model_dir)
    t = lap("probes and learning controls", t)

    timings["total"] = time.perf_counter() - start
    run = {
        "seed": seed,
        "minutes": None if smoke else minutes,
        "smoke": smoke,
        "llm": llm,
        "recipe": recipe,
        "heldout": heldout,
        "budget": budget.__dict__,
        "data": splits.counts(),
        "timings_s": timings,
        "stage1": stage1.summary(),
        "blind": blind.summary(),
        "stage2": stage2.summary(),
    }
    (out_dir / "demo_run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return write_demo_report(out_dir, run)
