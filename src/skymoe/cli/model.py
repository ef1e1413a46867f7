"""`skymoe model summary CONFIG_OR_DIR`: parameters (total / trainable / active per token) and FLOPs per module."""
from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="inspect SkyMoE models")
    commands = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    summary = commands.add_parser("summary", help="parameter and FLOP summary of a model directory or config.json")
    summary.add_argument("path", metavar="CONFIG_OR_DIR")
    summary.add_argument("--context", type=int, default=512, help="context length for attention FLOPs (default 512)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    summary.set_defaults(func=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    from skymoe.model.summary import format_summary, summarize

    result = summarize(args.path, context=args.context)  # a bad path or config: ModelFolderError, one line
    print(json.dumps(result, indent=2) if args.json else format_summary(result))
    return 0
