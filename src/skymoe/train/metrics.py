"""What a person sees during training: metrics.jsonl, TensorBoard scalars, router/expert statistics."""
from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path

import torch


def router_accuracy(logits: torch.Tensor | None, labels: torch.Tensor | None) -> float | None:
    """Accuracy over rows with a known label (>= 0); None when there are none."""
    if logits is None or labels is None:
        return None
    known = labels >= 0
    if not known.any():
        return None
    return (logits[known].argmax(-1) == labels[known]).float().mean().item()


def expert_load_stats(expert_load: torch.Tensor | None) -> dict[str, float]:
    """Per-layer expert load fractions and the entropy of each layer's load (nats; log E = perfectly balanced)."""
    if expert_load is None or expert_load.numel() == 0:
        return {}
    load = expert_load.detach().float().cpu()
    stats = {}
    for layer, row in enumerate(load):
        p = row / row.sum().clamp_min(1e-12)
        stats[f"expert_entropy/layer{layer}"] = float(-(p * p.clamp_min(1e-12).log()).sum())
        for expert, value in enumerate(row.tolist()):
            stats[f"expert_load/layer{layer}/expert{expert}"] = value
    stats["expert_entropy/max"] = math.log(load.shape[-1])
    return stats


def peak_memory_mb() -> float:
    """Peak accelerator memory when on GPU, else the process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # macOS reports bytes, Linux KiB


class MetricsLogger:
    """Appends one JSON line per logged step to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(output_dir) / "metrics.jsonl"
        self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "tb"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (a resumed run re-logs those steps) and torn lines."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:  # the line being written when the run was killed
            continue
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
