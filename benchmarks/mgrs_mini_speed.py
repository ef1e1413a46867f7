"""MGRS-mini generation speed (scenes per minute): one JSON line on stdout + a results table.

    python benchmarks/mgrs_mini_speed.py [--n 2000] [--size 128] [--workers 2] [--out results/mgrs_mini_speed.md]

Times the whole ``generate`` call (background decoding, rendering, PNG writing,
question derivation, JSONL writing) into a temporary folder. Target: >= 1,000
scenes/minute on 2 cores at the default size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from skymoe.data.mgrs_mini import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "mgrs_mini_speed.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = generate(tmp, args.n, args.size, seed=0, workers=args.workers)
        seconds = time.perf_counter() - start
    samples = sum(s["samples"] for s in manifest["splits"].values())
    result = {
        "scenes": args.n, "size": args.size, "workers": args.workers, "seconds": round(seconds, 2),
        "scenes_per_minute": round(60 * args.n / seconds), "samples": samples,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(json.dumps(result))
    args.out.write_text(
        "# MGRS-mini generator speed\n\n"
        f"Machine: {result['machine']}; load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}.\n\n"
        "| scenes | size (px) | workers | seconds | scenes/min | samples | target |\n|---|---|---|---|---|---|---|\n"
        f"| {args.n} | {args.size} | {args.workers} | {result['seconds']} | {result['scenes_per_minute']:,} | {samples:,} | >= 1,000 scenes/min |\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
