"""A small on-disk dataset and tiny configs for the training tests (images made here, no downloads).

No pytest here: scripts/gpu_check.sh trains on the same data on a machine that may have no test tools.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
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
    "image_size": 32,
    "vision": {"patch_size": 16, "hidden_size": 32, "num_layers": 1},
    "llm": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64, "vocab_size": 300},
    "router": {"hidden_size": 16},
    "num_route_tokens": 2,
    "moe": {"lora_rank": 4, "dense_lora": False},
}
STAGE2_MODEL = {"moe": {"num_experts": 4, "top_k": 2, "lora_rank": 4}}  # the architecture is the stage-1 model's


def write_config(path: Path, data: Path, stage: int = 1, **top) -> Path:
    cfg = {
        "stage": stage,
        "seed": 0,
        "model": copy.deepcopy(STAGE2_MODEL if stage == 2 else TINY_MODEL),
        "data": {"mix": [{"path": str(data), "weight": 1.0}]},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "batch_size": 4,
        "max_steps": 8,
        "checkpoint_every": 4,
        "keep_last": 2,
        "log_every": 2,
    }
    if stage == 2:
        cfg["cda"] = {"enabled": True, "pair_prob": 0.5, "cutout_prob": 0.5, "attribute_prob": 0.5}
    for key, value in top.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path
