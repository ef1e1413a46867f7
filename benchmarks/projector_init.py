"""Does the projector's initialisation decide whether the model reads its images? (issue 15)

Trains the demo's stage-1 recipe (packaged ``skymoe/demo/stage1.yaml``: frozen
EfficientNet-Lite0 features, 4x4 multi-scale tokens, a 4-layer LLM from scratch)
on MGRS-mini's training split, task-balanced, twice with the same seed, data and
steps: once with the projector's fan-in initialisation (what
``skymoe.model.projector.FanInLinear`` keeps) and once with transformers' N(0, 0.02)
(what ``_init_weights`` used to give it). Both are scored on MGRS-mini's **val**
scene-classification samples beside the most-frequent-class prior, with the number
of distinct answers (1 = the model answers the same whatever the image).

    python benchmarks/projector_init.py [--steps 1000] [--scenes 3000] [--out out/bench_projector_init]

The last line printed is ``scene classification (val), fan-in / N(0, 0.02) / prior: A / B / C``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
from collections import Counter
from pathlib import Path
from unittest import mock

from _machine import machine


def normal_init(self) -> None:
    """transformers' Linear init: N(0, initializer_range=0.02) weights, zero bias."""
    import torch

    torch.nn.init.normal_(self.weight, std=0.02)
    torch.nn.init.zeros_(self.bias)


def stage1_config(train_file: Path, steps: int):
    from importlib import resources

    import yaml

    from skymoe.train.config import parse_config

    raw = yaml.safe_load((resources.files("skymoe.demo") / "stage1.yaml").read_text(encoding="utf-8"))
    raw["data"]["mix"] = [{"path": str(train_file), "balance": "task"}]
    raw.update(max_steps=steps, log_every=max(1, steps // 10), checkpoint_every=steps)
    return parse_config(raw)


def score(model_dir: Path, samples, suite) -> dict:
    from skymoe.eval.predict import generate_predictions
    from skymoe.model.inference import load_model

    model, processor = load_model(model_dir)
    predictions = generate_predictions(model, processor, samples, suite)
    hits = [p.prediction.strip().lower() in [r.lower() for r in p.references] for p in predictions]
    return {"accuracy": round(sum(hits) / len(hits), 3), "distinct_answers": len(Counter(p.prediction for p in predictions))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--scenes", type=int, default=3000, help="MGRS-mini scenes generated (80%% train, 10%% val)")
    parser.add_argument("--out", type=Path, default=Path("out/bench_projector_init"))
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "projector_init.md")
    args = parser.parse_args()

    from skymoe.assets import fetch_assets
    from skymoe.data.mgrs_mini import ensure_generated, load_split
    from skymoe.data.schema import Task, write_jsonl
    from skymoe.eval.suite import parse_suite
    from skymoe.model import projector
    from skymoe.train import train

    fetch_assets(["efficientnet-lite0"])
    root = ensure_generated(n=args.scenes, workers=os.cpu_count() or 1)
    args.out.mkdir(parents=True, exist_ok=True)
    train_file = args.out / "train.jsonl"
    write_jsonl(list(load_split("train", root)), train_file)
    val = [s for s in load_split("val", root) if s.task == Task.CLASSIFICATION]
    prior_answer = Counter(s.answer for s in load_split("train", root) if s.task == Task.CLASSIFICATION).most_common(1)[0][0]
    prior = round(sum(s.answer == prior_answer for s in val) / len(val), 3)
    suite = parse_suite({"name": "val-classification", "datasets": [{"name": "mgrs_mini", "splits": ["val"]}]}, check_data=False)
    cfg = stage1_config(train_file, args.steps)

    runs = {}
    for name, patch in (("fan-in", None), ("N(0, 0.02)", normal_init)):
        folder = args.out / ("fan_in" if patch is None else "normal")
        with mock.patch.object(projector.FanInLinear, "reset_parameters", patch) if patch else contextlib.nullcontext():
            result = train(copy.deepcopy(cfg), folder)
        runs[name] = {"final_loss": round(result.final_loss, 4), **score(result.model_dir, val, suite)}
    report = {"machine": machine(), "steps": args.steps, "batch_size": cfg.batch_size, "scenes": args.scenes,
              "val_classification_samples": len(val), "prior": prior, "runs": runs}
    (args.out / "projector_init.json").write_text(json.dumps(report, indent=2) + "\n")
    args.results.write_text(markdown(report), encoding="utf-8")
    print(json.dumps(report, indent=2))
    print(f"scene classification (val), fan-in / N(0, 0.02) / prior: "
          f"{runs['fan-in']['accuracy']} / {runs['N(0, 0.02)']['accuracy']} / {prior}")


def markdown(report: dict) -> str:
    lines = [
        "# Projector initialisation and image use (`benchmarks/projector_init.py`)",
        "",
        f"Machine: {report['machine']}.",
        f"The demo's stage-1 recipe on MGRS-mini train ({report['scenes']} scenes, task-balanced), {report['steps']} steps of "
        f"{report['batch_size']}, the same seed and data for both rows; scored on the {report['val_classification_samples']} "
        "val scene-classification samples. Distinct answers = 1 means one answer whatever the image.",
        "",
        "| projector init | accuracy | distinct answers | final training loss |",
        "|---|---|---|---|",
    ]
    for name, run in report["runs"].items():
        lines.append(f"| {name} | {run['accuracy']} | {run['distinct_answers']} | {run['final_loss']} |")
    lines += ["", f"Most-frequent-class prior: {report['prior']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
