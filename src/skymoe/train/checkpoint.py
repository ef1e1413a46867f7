"""Atomic, verifiable training checkpoints on top of ``accelerate``'s save/load state.

``Accelerator.save_state`` already writes model, optimiser, scheduler, every
process's RNG states (python, numpy, torch) and registered objects (our data
position). What it does not do is make the write atomic or tell a half-written
folder from a good one, so this module adds: write into a temporary folder,
record a manifest with the sha256 of every file, rename into place, keep the
last N; on resume, verify newest first and fall back with a warning, moving
the corrupt folders aside so that pruning never keeps them in place of good ones.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import warnings
from pathlib import Path

MANIFEST = "manifest.json"
PREFIX = "step-"
CORRUPT_PREFIX = ".corrupt-"  # not PREFIX: neither pruning nor a later resume sees these


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped because it is incomplete or corrupt."""


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def save_checkpoint(accelerator, checkpoints_dir: Path, step: int, keep_last: int, extra_saver=None) -> Path:
    """Write checkpoint ``step`` atomically; every process must call this.

    ``extra_saver(folder)`` (main process only) adds files that are not part of
    the accelerate state, e.g. the processor.
    """
    checkpoints_dir = Path(checkpoints_dir)
    final = checkpoints_dir / checkpoint_name(step)
    tmp = checkpoints_dir / f".tmp-{checkpoint_name(step)}"
    if accelerator.is_main_process:
        checkpoints_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of a killed run
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if extra_saver is not None:
            extra_saver(tmp)
        _write_manifest(tmp, step)
        if final.exists():  # the same step written again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(checkpoints_dir)
        prune_checkpoints(checkpoints_dir, keep_last)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Checkpoint folders, oldest first (temporary folders excluded)."""
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return []
    return sorted(p for p in checkpoints_dir.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def verify_checkpoint(folder: Path) -> str | None:
    """Return None if ``folder`` is complete and intact, else the reason it is not."""
    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (the write did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        return f"unreadable manifest ({exc.msg})"
    for rel, expected in manifest["files"].items():
        path = Path(folder) / rel
        if not path.is_file():
            return f"missing file {rel}"
        try:
            digest = _sha256(path)
        except OSError as exc:  # e.g. moved aside by the main process of the same launch meanwhile
            return f"unreadable file {rel} ({exc.strerror})"
        if digest != expected:
            return f"checksum mismatch in {rel}"
    return None


def latest_good_checkpoint(checkpoints_dir: Path) -> Path | None:
    """Newest checkpoint that verifies; warns about each newer one that does not.

    When an older one verifies, the corrupt newer ones are moved aside: left in
    place they would count towards ``keep_last``, and pruning would delete the
    good checkpoint the run resumed from. With no good one they stay untouched.
    """
    corrupt, good = [], None
    for folder in reversed(list_checkpoints(checkpoints_dir)):
        reason = verify_checkpoint(folder)
        if reason is None:
            good = folder
            break
        corrupt.append((folder, reason))
    main_process = os.environ.get("RANK", "0") == "0"  # one process of a launch moves; the others only skip
    for folder, reason in corrupt:
        if good is None:
            fate = "no older one verifies"
        elif main_process:
            fate = f"moved it aside to {_set_aside(folder)}; resuming from {good.name}"
        else:
            fate = f"resuming from {good.name}"
        warnings.warn(f"skipping checkpoint {folder}: {reason}; {fate}", CheckpointWarning, stacklevel=2)
    return good


def _set_aside(folder: Path) -> Path:
    """Rename ``folder`` to a free ``.corrupt-<name>[.N]`` next to it."""
    for n in itertools.count():
        target = folder.with_name(f"{CORRUPT_PREFIX}{folder.name}" + (f".{n}" if n else ""))
        if not target.exists():
            break
    try:
        os.rename(folder, target)
    except FileNotFoundError:  # another process of the same launch moved it first
        pass
    return target


def prune_checkpoints(checkpoints_dir: Path, keep_last: int) -> None:
    for folder in list_checkpoints(checkpoints_dir)[:-keep_last]:
        shutil.rmtree(folder, ignore_errors=True)


def _write_manifest(folder: Path, step: int) -> None:
    files = {
        str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST
    }
    path = folder / MANIFEST
    with path.open("w") as f:
        json.dump({"step": step, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
