"""Generate MGRS-mini to a folder, and load it (generating the default benchmark into the cache once).

Layout of a generated folder::

    images/<scene id>.png
    train.jsonl  val.jsonl  test.jsonl   samples (skymoe.data.schema), image paths relative
    scenes.jsonl                          ground truth per scene: class, water, objects with boxes
    manifest.json                         parameters and counts per split / task / granularity

Every scene has its own generator ``default_rng([seed, index])``, so the output
depends only on (n, size, seed), not on the number of worker processes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from skymoe.data.mgrs_mini.backgrounds import BackgroundPool, default_background_paths
from skymoe.data.mgrs_mini.questions import DATASET, scene_samples
from skymoe.data.mgrs_mini.scene import compose_scene
from skymoe.data.schema import Sample, read_jsonl, write_jsonl
from skymoe.errors import DataError

GENERATOR_VERSION = 2  # bump when the output for a given (n, size, seed) changes: names a fresh cache folder
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_N, DEFAULT_SIZE, DEFAULT_SEED = 1000, 128, 0
_CHUNK = 64  # scenes per worker task

_pool: BackgroundPool | None = None  # one per (worker) process, built by _init_worker


def split_assignment(n: int, seed: int) -> list[str]:
    """The split of every scene index: a seeded shuffle cut 80/10/10 (val/test get >= 1 scene when n >= 3)."""
    n_val = n_test = max(1, round(SPLIT_FRACTIONS[1] * n)) if n >= 3 else 0
    order = np.random.default_rng([seed, n]).permutation(n)
    splits = ["train"] * n
    for rank, index in enumerate(order):
        if rank < n_val:
            splits[index] = "val"
        elif rank < n_val + n_test:
            splits[index] = "test"
    return splits


def scene_id(seed: int, index: int) -> str:
    return f"mgrs{seed}-{index:06d}"


def _init_worker(paths: list[Path], size: int) -> None:
    global _pool
    _pool = BackgroundPool.from_paths(paths, size)


def _make_scenes(out_dir: Path, seed: int, indices: list[int], splits: list[str]) -> list[tuple[dict, list[dict]]]:
    """Render, save and question a chunk of scenes; returns (scene record, sample dicts) per scene."""
    results = []
    for index, split in zip(indices, splits):
        rng = np.random.default_rng([seed, index])
        scene, pixels, _ = compose_scene(scene_id(seed, index), rng, _pool)
        scene.split = split
        image_rel = f"images/{scene.id}.png"
        Image.fromarray(pixels, "RGB").save(out_dir / image_rel, format="PNG", compress_level=1)
        samples = scene_samples(scene, image_rel, rng)
        results.append((scene.to_dict(), [s.to_dict() for s in samples]))
    return results


def generate(out_dir: str | Path, n: int = DEFAULT_N, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED, *,
             workers: int = 1, background_paths: list[Path] | None = None, progress: bool = False) -> dict:
    """Write the benchmark to ``out_dir``; returns the manifest."""
    if n < 1 or size < 64:
        raise DataError(f"need n >= 1 scenes and size >= 64 px, got n={n}, size={size}", field="n/size")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    paths = sorted(background_paths or default_background_paths())
    splits = split_assignment(n, seed)
    chunks = [list(range(i, min(n, i + _CHUNK))) for i in range(0, n, _CHUNK)]
    jobs = [(out_dir, seed, c, [splits[i] for i in c]) for c in chunks]
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(paths, size)) as ex:
            results = ex.map(_make_scenes, *zip(*jobs))
            results = [r for chunk in _progress(results, len(jobs), progress) for r in chunk]
    else:
        _init_worker(paths, size)
        results = [r for job in _progress(jobs, len(jobs), progress) for r in _make_scenes(*job)]
    return _write_index(out_dir, results, n=n, size=size, seed=seed, backgrounds=[p.name for p in paths])


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc="MGRS-mini", unit="chunk")


def _write_index(out_dir: Path, results, *, n: int, size: int, seed: int, backgrounds: list[str]) -> dict:
    by_split: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    scene_counts = {s: 0 for s in SPLITS}
    tasks: dict[str, dict[str, int]] = {}
    with (out_dir / "scenes.jsonl").open("w", encoding="utf-8") as f:
        for scene, samples in results:
            f.write(json.dumps(scene) + "\n")
            scene_counts[scene["split"]] += 1
            for d in samples:
                by_split[scene["split"]].append(Sample.from_dict(d))
                per_task = tasks.setdefault(d["task"], {})
                per_task[d["granularity"]] = per_task.get(d["granularity"], 0) + 1
    for split, samples in by_split.items():
        write_jsonl(samples, out_dir / f"{split}.jsonl")
    manifest = {
        "dataset": DATASET,
        "generator_version": GENERATOR_VERSION,
        "n": n,
        "size": size,
        "seed": seed,
        "splits": {s: {"scenes": scene_counts[s], "samples": len(by_split[s])} for s in SPLITS},
        "tasks": {t: dict(sorted(g.items())) for t, g in sorted(tasks.items())},
        "backgrounds": backgrounds,
    }
    # the manifest is written last: its presence marks a complete folder
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def cache_root() -> Path:
    return Path(os.environ.get("SKYMOE_CACHE") or Path.home() / ".cache" / "skymoe") / "mgrs_mini"


def default_dir(n: int = DEFAULT_N, size: int = DEFAULT_SIZE, seed: int = DEFAULT_SEED) -> Path:
    return cache_root() / f"v{GENERATOR_VERSION}-n{n}-px{size}-seed{seed}"


def ensure_generated(root: str | Path | None = None, *, n: int = DEFAULT_N, size: int = DEFAULT_SIZE,
                     seed: int = DEFAULT_SEED, workers: int = 1) -> Path:
    """The folder holding the benchmark, generated first if absent (temp folder + rename: never half-written)."""
    root = Path(root) if root is not None else default_dir(n, size, seed)
    if (root / "manifest.json").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        generate(tmp, n, size, seed, workers=workers)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first (or root exists but is incomplete)
            if not (root / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def load_split(split: str = "train", root: str | Path | None = None, *, n: int = DEFAULT_N, size: int = DEFAULT_SIZE,
               seed: int = DEFAULT_SEED) -> list[Sample]:
    """Samples of one split; the default benchmark is generated into the cache on first use."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {list(SPLITS)}", field="split")
    return list(read_jsonl(ensure_generated(root, n=n, size=size, seed=seed) / f"{split}.jsonl"))
