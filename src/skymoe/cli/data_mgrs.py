"""``skymoe data make-mgrs-mini``: write the procedural MGRS-mini benchmark to a folder.

Registered by ``skymoe.cli.data`` under the ``data`` command.
"""
from __future__ import annotations

import argparse
import json
import os


def register(data_subparsers) -> None:
    from skymoe.data.mgrs_mini.writer import DEFAULT_N, DEFAULT_SEED, DEFAULT_SIZE

    p = data_subparsers.add_parser(
        "make-mgrs-mini",
        help="generate the MGRS-mini multi-granularity benchmark (real backgrounds, exact boxes)",
        description="Draw catalogue objects on crops of the embedded real imagery and derive samples for every "
        "task and granularity; writes images/, train/val/test.jsonl, scenes.jsonl and manifest.json.",
    )
    p.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of scenes (default {DEFAULT_N})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"scene size in pixels (default {DEFAULT_SIZE})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the output depends only on n, size and seed")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (does not change the output)")
    p.set_defaults(func=make_mgrs_mini)


def make_mgrs_mini(args: argparse.Namespace) -> int:
    from skymoe.data.mgrs_mini import generate

    manifest = generate(args.out, args.n, args.size, args.seed, workers=args.workers, progress=True)
    print(json.dumps({"out": str(args.out), "splits": manifest["splits"], "tasks": manifest["tasks"]}, indent=2))
    return 0
