"""A small on-disk dataset and tiny configs for the training tests (images made here, no downloads)."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from skymoe.data.cda import PALETTE
from skymoe.data.schema import Box, Sample, Turn, write_jsonl

COLOURS = ["red", "blue", "yellow"]


def write_toy_dataset(folder: Path, n: int = 24, size: int = 32) -> Path:
    """JSONL of counting / colour / presence / caption samples over PNGs with coloured squares."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        count, colour = 1 + i % 3, COLOURS[i % len(COLOURS)]
        pixels = rng.normal(100, 10, size=(size, size, 3)).clip(0, 255).astype(np.uint8)
        boxes = []
        for k in range(count):
            x, y = 2 + 10 * k, 4 + (i % 2) * 14
            pixels[y : y + 7, x : x + 7] = PALETTE[colour]
            boxes.append(Box(x, y, x + 7, y + 7, "car"))
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        kind = i % 4
        if kind == 0:
            task, gran, qtype, q, a = "counting", "region", "count", "How many cars are there?", str(count)
        elif kind == 1:
            task, gran, qtype, q, a = "vqa", "object", "color", "What colour are the cars?", colour
        elif kind == 2:
            task, gran, qtype, q, a = "vqa", "region", "presence", "Is there a car?", "yes"
        else:
            task, gran, qtype, q, a = "caption", "image", None, "Describe the image.", f"{count} {colour} cars on grey ground"
        samples.append(
            Sample(
                id=f"toy{i}", image=f"img{i}.png", task=task, granularity=gran, question_type=qtype,
                conversation=[Turn("user", q), Turn("assistant", a)], image_size=(size, size), boxes=boxes, dataset="toy",
            )
        )
    path = folder / "toy.jsonl"
    write_jsonl(samples, path)
    return path


TINY_MODEL = {
    "image_size": 32, "patch_size": 16, "vision_hidden_size": 32, "vision_layers": 1, "hidden_size": 32,
    "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64, "vocab_size": 300,
    "router_hidden_size": 16, "num_route_tokens": 2, "lora_rank": 4,
}


def write_config(path: Path, data: Path, stage: int = 1, **top) -> Path:
    cfg = {
        "stage": stage,
        "seed": 0,
        "model": dict(TINY_MODEL),
        "data": {"mix": [{"path": str(data), "weight": 1.0}]},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "batch_size": 4,
        "max_steps": 8,
        "checkpoint_every": 4,
        "keep_last": 2,
        "log_every": 2,
    }
    if stage == 2:
        cfg["model"].update(num_experts=4, top_k=2)
        cfg["cda"] = {"enabled": True, "pair_prob": 0.5, "cutout_prob": 0.5, "attribute_prob": 0.5}
    for key, value in top.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on shared CPU cores train several times faster without intra-op threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
