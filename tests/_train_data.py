"""Launch helpers for the training tests; the toy data and configs live in _toy_data."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from _toy_data import TINY_MODEL, write_config, write_toy_dataset  # noqa: F401 (re-exported for the tests)


SUBPROCESS_ENV = {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


REPO = Path(__file__).resolve().parents[1]
# DeepSpeed JIT-compiles its CPU comm op once per machine (scripts/install_test_tools.sh warms this folder)
TORCH_EXTENSIONS_DIR = Path(os.environ.get("SKYMOE_CACHE") or Path.home() / ".cache" / "skymoe") / "torch_extensions"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(config_name: str, *args) -> dict:
    """subprocess keywords for the command docs/TRAINING.md gives for 2 CPU processes: the `accelerate` console
    script with a repo launch config, from the repo root (the DeepSpeed configs name their JSON relative to it).
    ACCELERATE_USE_CPU=1 makes torchrun's local processes use the CPU and gloo; DeepSpeed goes without it."""
    command = [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", str(REPO / "configs" / "accelerate" / config_name),
        "--main_process_port", str(free_port()), *map(str, args),
    ]
    env = {**os.environ, **SUBPROCESS_ENV, "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(TORCH_EXTENSIONS_DIR))}
    if not config_name.startswith("deepspeed"):
        env["ACCELERATE_USE_CPU"] = "1"
    return {"args": command, "env": env, "cwd": REPO}
