"""Stage-1 recipe variants of the demo, trained side by side and scored on MGRS-mini's VALIDATION split (issue 15).

    python benchmarks/recipe_variants.py --out out/recipe_variants                 # every variant, in parallel processes
    python benchmarks/recipe_variants.py --out out/rv --variants base,grid8 --scale 0.01 --eval-per-task 8   # a smoke run
    python benchmarks/recipe_variants.py --table out/recipe_variants/results.jsonl  # -> benchmarks/results/recipe_variants.md

Each variant is the demo's packaged stage-1 YAML with a few keys changed, trained on MGRS-mini's train split alone
(task-balanced; the real datasets are left out so that the variants differ only in the recipe) and scored on 250
validation samples per task; the test split is never read. The variants run as parallel processes, so this is a job for
a machine with many cores or a GPU (the numbers in BENCHMARKS.md came from one H200 run, 8 processes, ~5 minutes).
``--hr-backgrounds-only`` builds MGRS-mini over RSVQA-HR's PNGs only (for a machine without rasterio that carries only
that asset), and without Java the caption scorer falls back to lower-case word tokens and skips METEOR/SPICE (CIDEr
and BLEU are pure Python): the table says which was used.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEMO_STAGE1_STEPS = 898  # what `make demo` gave stage 1 when these variants ran (4x4 tokens, 8 minutes)
VARIANTS: dict[str, dict] = {
    "base": {},
    "steps4x": {"steps": 4 * DEMO_STAGE1_STEPS},
    "sigma2": {"model.location_sigma": 2.0},
    "grid8": {"model.vision.feature_strides": [8, 16]},
    "grid8_sigma2": {"model.vision.feature_strides": [8, 16], "model.location_sigma": 2.0},
    "wide192": {"model.llm.hidden_size": 192, "model.llm.intermediate_size": 512},
    "grid8_steps4x": {"model.vision.feature_strides": [8, 16], "steps": 4 * DEMO_STAGE1_STEPS},
    "sigma2_steps4x": {"model.location_sigma": 2.0, "steps": 4 * DEMO_STAGE1_STEPS},
}
METRICS = {"caption": "CIDEr", "classification": "overall_accuracy", "counting": "exact_accuracy", "grounding": "acc@0.5",
           "region_caption": "CIDEr", "vqa": "overall_accuracy"}
HELD_OUT = "mgrs_mini/unseen-images"


def prepare(data_dir: Path, eval_per_task: int, hr_backgrounds_only: bool) -> None:
    import yaml

    from skymoe.demo.splits import DEMO_TUNING_SOURCES, build_demo_splits

    if hr_backgrounds_only:
        import skymoe.data.mgrs_mini.backgrounds as backgrounds
        backgrounds.BACKGROUND_ASSETS = (("rsvqa_hr", "Images/Data/*.png"),)
    splits = build_demo_splits(seed=0, mgrs_scenes=3000, eval_per_task=eval_per_task,
                               datasets={"mgrs_mini": DEMO_TUNING_SOURCES["mgrs_mini"]})
    for sample in splits.unseen_images:
        sample.split = "unseen-images"
    splits.write(data_dir)
    suite = {"name": "recipe-variants", "generation": {"max_new_tokens": 24, "batch_size": 64},
             "baseline_path": "train.jsonl", "datasets": [{"path": "unseen_images.jsonl"}]}
    (data_dir / "suite.yaml").write_text(yaml.safe_dump(suite), encoding="utf-8")


def java_free_caption_scorer() -> bool:
    """Where Java is missing: word tokens instead of PTB, no METEOR/SPICE. Returns True if it had to."""
    import skymoe.eval.scorers.caption as caption

    if shutil.which("java"):
        return False
    caption.tokenize = lambda caps: {k: [" ".join(re.findall(r"[a-z0-9]+", c.lower())) for c in v] for k, v in caps.items()}
    caption._meteor = lambda: type("NoMeteor", (), {"compute_score": lambda self, refs, cands: (0.0, None)})()
    caption.spice = lambda refs, cands: {"status": "skipped"}
    return True


def config_for(name: str, data_dir: Path, out: Path, scale: float):
    from skymoe.train.config import parse_config
    from skymoe.demo.run import packaged_config

    changes = dict(VARIANTS[name])
    raw = packaged_config("stage1.yaml")
    raw["data"]["mix"] = [{"path": str(data_dir / "train_synthetic.jsonl"), "weight": 1.0, "balance": "task"}]
    raw["data"]["feature_cache_dir"] = str(out / "features")  # one cache per process: no concurrent writers
    raw["max_steps"] = max(3, round(changes.pop("steps", DEMO_STAGE1_STEPS) * scale))
    for dotted, value in changes.items():
        section = raw
        *path, last = dotted.split(".")
        for key in path:
            section = section.setdefault(key, {})
        section[last] = value
    return parse_config(raw)


def run_variant(name: str, out: Path, scale: float) -> dict:
    import torch

    from skymoe.eval import evaluate
    from skymoe.train import train

    torch.set_num_threads(2)
    word_tokens = java_free_caption_scorer()
    config = config_for(name, out / "data", out / name, scale)
    start = time.time()
    result = train(config, out / name / "stage1")
    train_s = time.time() - start
    evaluate(result.model_dir, out / "data" / "suite.yaml", out / name / "eval")
    metrics = json.loads((out / name / "eval" / "metrics.json").read_text(encoding="utf-8"))
    model, prior = metrics["model"]["by_dataset"][HELD_OUT], metrics["baseline"]["by_dataset"][HELD_OUT]
    return {"name": name, "steps": config.max_steps, "train_s": round(train_s),
            "word_tokens": word_tokens, "n": {t: model[t]["n"] for t in METRICS if t in model},
            "model": {t: round(model[t][m], 4) for t, m in METRICS.items() if t in model},
            "prior": {t: round(prior[t][m], 4) for t, m in METRICS.items() if t in prior and m in prior[t]},
            "grounding_parse_failures": model.get("grounding", {}).get("parse_failure_rate")}


def table(results: Path) -> str:
    rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = {name: i for i, name in enumerate(VARIANTS)}
    rows.sort(key=lambda r: order.get(r["name"], len(order)))
    tasks = list(METRICS)
    n = rows[0].get("n", "250 per task (its first run did not record n)")
    scoring = {True: "word tokens, no METEOR (no Java there)", False: "PTB tokens"}.get(rows[0].get("word_tokens"), "not recorded")
    lines = ["# Stage-1 recipe variants on MGRS-mini validation (`benchmarks/recipe_variants.py`)", "",
             f"One stage-1 run per variant (seed 0), MGRS-mini train split only, task-balanced; scored on the validation split "
             f"(n = {n}; a 95% interval on an accuracy near 0.5 is about +-0.06). Caption scoring: {scoring}. "
             "Variants: " + "; ".join(f"`{r['name']}` {VARIANTS.get(r['name'], '?')}" for r in rows) + ".", "",
             "| variant | steps | " + " | ".join(f"{t} ({METRICS[t]})" for t in tasks) + " | grounding parse failures |",
             "|---|---|" + "---|" * len(tasks) + "---|",
             "| prior | - | " + " | ".join(f"{rows[0]['prior'].get(t, float('nan')):.3f}" for t in tasks) + " | - |"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['steps']} | " + " | ".join(f"{r['model'].get(t, float('nan')):.3f}" for t in tasks)
                     + f" | {r['grounding_parse_failures']:.2f} |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/recipe_variants"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every variant's steps (smoke runs)")
    parser.add_argument("--eval-per-task", type=int, default=250)
    parser.add_argument("--hr-backgrounds-only", action="store_true")
    parser.add_argument("--table", type=Path, help="only write benchmarks/results/recipe_variants.md from this results.jsonl")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a worker process: run this variant
    args = parser.parse_args()
    if args.table:
        path = Path(__file__).parent / "results" / "recipe_variants.md"
        path.write_text(table(args.table), encoding="utf-8")
        print(f"wrote {path}")
        return
    if args.one:
        (args.out / f"{args.one}.json").write_text(json.dumps(run_variant(args.one, args.out, args.scale)) + "\n")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    prepare(args.out / "data", args.eval_per_task, args.hr_backgrounds_only)
    names = args.variants.split(",")
    workers = {name: subprocess.Popen([sys.executable, __file__, "--out", str(args.out), "--scale", str(args.scale), "--one", name],
                                      env={**os.environ, "TQDM_DISABLE": "1"}, stdout=open(args.out / f"{name}.log", "w"),
                                      stderr=subprocess.STDOUT) for name in names}
    failed = [name for name, worker in workers.items() if worker.wait()]
    with open(args.out / "results.jsonl", "w", encoding="utf-8") as results:
        for name in names:
            if (args.out / f"{name}.json").is_file():
                results.write((args.out / f"{name}.json").read_text(encoding="utf-8"))
    print(table(args.out / "results.jsonl"))
    if failed:
        sys.exit(f"failed: {', '.join(failed)} (logs in {args.out})")


if __name__ == "__main__":
    main()
