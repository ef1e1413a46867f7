"""Resuming a run: which checkpoint to continue from, and that the settings are those of the run it continues."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from skymoe.train import checkpoint as ckpt
from skymoe.train.config import DatasetSpec, TrainConfig
from skymoe.train.errors import TrainingError


# What a resumed run may change: how long it runs, how it logs and checkpoints, and whether its layers run
# compiled (the same computation, to float rounding). Anything else would
# make the continued run differ from the one its checkpoint belongs to (and train_config.yaml lie about it).
RESUMABLE_CHANGES = {"max_steps", "epochs", "log_every", "checkpoint_every", "keep_last", "compile"}


def check_same_run(cfg: TrainConfig, saved_path: Path) -> None:
    import yaml

    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    mix = (saved.get("data") or {}).get("mix")
    if isinstance(mix, list):  # a run saved before a mix-entry key existed has that key's default
        defaults = dataclasses.asdict(DatasetSpec())
        saved["data"]["mix"] = [{**defaults, **entry} if isinstance(entry, dict) else entry for entry in mix]
    changed = sorted(key for key, value in _flat(cfg.to_dict()).items()
                     if key not in RESUMABLE_CHANGES and _flat(saved).get(key, value) != value)
    if changed:
        raise TrainingError(f"--resume with other settings than the run it continues ({saved_path}): {', '.join(changed)}; "
                            f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change: restore the others or choose another --output")


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1} (lists stay whole)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_point(checkpoints_dir: Path, resume: bool) -> Path | None:
    existing = ckpt.list_checkpoints(checkpoints_dir)
    if not resume:
        if existing:
            raise TrainingError(
                f"{checkpoints_dir.parent} already holds a run ({len(existing)} checkpoints); "
                "pass --resume to continue it or choose another --output"
            )
        return None
    good = ckpt.latest_good_checkpoint(checkpoints_dir)
    if good is None and existing:
        raise TrainingError(f"--resume: no intact checkpoint in {checkpoints_dir} (all {len(existing)} failed verification)")
    return good  # None: nothing saved yet, start from scratch


