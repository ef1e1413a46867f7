"""``skymoe eval`` (model + suite -> predictions, metrics, report) and ``skymoe score`` (re-score predictions)."""
from __future__ import annotations

import argparse
import os

from skymoe.cli.options import non_negative_int, positive_int


def _print_summary(metrics: dict, out_dir: str) -> None:
    for task, o in metrics["model"]["overall"].items():
        base = metrics["baseline"].get("overall", {}).get(task, {}).get("value")
        baseline = f"  (baseline {base:.4f})" if isinstance(base, float) else ""
        print(f"{task:15s} {o['metric']:18s} {o['value']:.4f}{baseline}  n={o['n']}")
    print(f"report: {os.path.join(out_dir, 'report.html')}")


def run_eval(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from skymoe.eval import evaluate

    controls = dict(args.control or [])
    metrics = evaluate(args.model, args.suite, args.out, limit=args.limit, batch_size=args.batch_size,
                       controls=controls, probe=args.probe)
    _print_summary(metrics, args.out)
    if controls or args.probe:
        print(f"learning controls: {os.path.join(args.out, 'learning.json')}")
    return 0


def _control(text: str) -> tuple[str, str]:
    from skymoe.eval.controls import MODELS

    name, sep, directory = text.partition("=")
    if not sep or name not in MODELS or name == "moe" or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL_DIR with NAME one of blind, dense; got {text!r}")
    return name, directory


def run_score(args: argparse.Namespace) -> int:
    from skymoe.eval import score

    metrics = score(args.predictions, args.out, references=args.references)
    _print_summary(metrics, args.out)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a saved model on a suite: predictions, metrics, report")
    p.add_argument("--model", required=True, help="model directory (save_pretrained layout)")
    p.add_argument("--suite", required=True, help="suite YAML, or the name of a packaged suite (e.g. embedded)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--limit", type=non_negative_int, default=None, help="at most N samples per dataset split")
    p.add_argument("--batch-size", type=positive_int, default=None, help="generation batch size (default: the suite's)")
    p.add_argument("--control", type=_control, action="append", metavar="NAME=DIR",
                   help="a control model evaluated on the same samples for learning.json: blind=DIR (trained with "
                   "data.blind: true) or dense=DIR (stage 1); repeatable")
    p.add_argument("--probe", action="store_true",
                   help="fit linear probes on the model's frozen tower features (on the suite's baseline samples) "
                   "and write learning.json")
    p.set_defaults(func=run_eval)

    s = subparsers.add_parser("score", help="re-score saved predictions without a model")
    s.add_argument("--predictions", required=True, help="predictions.jsonl written by `skymoe eval`")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument(
        "--references",
        default=None,
        help="samples JSONL to score bare {id, prediction} lines against (e.g. another model's prediction dump)",
    )
    s.set_defaults(func=run_score)
