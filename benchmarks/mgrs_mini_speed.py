"""MGRS-mini generation speed (scenes per minute), written to stdout as one JSON line.

    python benchmarks/mgrs_mini_speed.py [--n 2000] [--size 128] [--workers 2]

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

from skymoe.data.mgrs_mini import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = generate(tmp, args.n, args.size, seed=0, workers=args.workers)
        seconds = time.perf_counter() - start
    samples = sum(s["samples"] for s in manifest["splits"].values())
    print(json.dumps({
        "scenes": args.n, "size": args.size, "workers": args.workers, "seconds": round(seconds, 2),
        "scenes_per_minute": round(60 * args.n / seconds), "samples": samples,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
    }))


if __name__ == "__main__":
    main()
