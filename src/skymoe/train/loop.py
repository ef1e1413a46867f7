"""The training loop: steps, gradient accumulation, logging and checkpoints, on a prepared accelerate run.

The objective is the model's ``output.loss`` (its config owns the loss weights); the log shows
``output.loss_terms`` unweighted, and ``loss/total`` is that same objective.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from skymoe.model.losses import LOSS_TERMS
from skymoe.train import checkpoint as ckpt
from skymoe.train.config import TrainConfig
from skymoe.train.errors import TrainingDivergedError
from skymoe.train.metrics import MetricsLogger, expert_load_stats, router_accuracy


@dataclass
class TrainingPosition:
    """Where the run is: saved with every checkpoint (accelerate calls state_dict/load_state_dict)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this process already consumed in `epoch`
    samples_seen: int = 0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)



@dataclass
class Run:
    """Everything the loop needs, after accelerate.prepare."""

    model: Any
    processor: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    group_names: list[str]
    total_steps: int


def run_loop(cfg: TrainConfig, accelerator, run: Run, position: TrainingPosition, output_dir: Path) -> list[tuple[int, float]]:
    """Train until ``run.total_steps``; log, checkpoint; returns (step, total loss) per log line."""
    from tqdm.auto import tqdm

    logger = MetricsLogger(output_dir) if accelerator.is_main_process else None
    progress = tqdm(total=run.total_steps, initial=position.step, disable=not accelerator.is_main_process, desc=f"stage {cfg.stage}")
    window, loss_history = _Window(), []
    model, optimizer, scheduler = run.model, run.optimizer, run.scheduler

    def save_processor(folder: Path) -> None:
        run.processor.save_pretrained(folder / "processor")

    model.train()
    try:
        while position.step < run.total_steps:
            # The prepared loader hands the epoch to MixSampler; a skip loader's set_epoch does not reach it with
            # several processes (accelerate's BatchSamplerShard sits between), so a resumed run would replay epoch 0.
            run.loader.set_epoch(position.epoch)
            loader = accelerator.skip_first_batches(run.loader, position.batch_in_epoch) if position.batch_in_epoch else run.loader
            loader.set_epoch(position.epoch)
            for batch in loader:
                with accelerator.accumulate(model):
                    output, is_view, batch = _forward(model, batch)
                    values = _check_finite(accelerator, output, position)
                    accelerator.backward(output.loss)
                    if accelerator.sync_gradients and cfg.optim.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad()
                real = int((~is_view).sum()) * accelerator.num_processes
                position.batch_in_epoch += 1
                position.samples_seen += real
                window.add(values, real, output, batch, is_view)
                if not accelerator.sync_gradients:
                    continue
                position.step += 1
                progress.update(1)
                last = position.step == run.total_steps
                if position.step % cfg.log_every == 0 or last:
                    scalars = window.flush(run.group_names, scheduler.get_last_lr())
                    loss_history.append((position.step, scalars["loss/total"]))
                    progress.set_postfix(
                        loss=f"{scalars['loss/total']:.4f}",
                        lr=f"{scalars['lr/' + run.group_names[0]]:.2e}",
                        sps=f"{scalars['samples_per_s']:.1f}",
                    )
                    if logger is not None:
                        logger.log(position.step, {"epoch": position.epoch, **scalars})
                if position.step % cfg.checkpoint_every == 0 or last:
                    ckpt.save_checkpoint(accelerator, output_dir / "checkpoints", position.step, cfg.keep_last, save_processor)
                if last:
                    break
            else:
                position.epoch += 1
                position.batch_in_epoch = 0
    finally:
        progress.close()
        if logger is not None:
            logger.close()
    return loss_history


def _forward(model, batch: dict):
    """One forward pass; returns the output (``loss`` is the objective), which rows are CDA views, and the model batch."""
    from skymoe.model.modeling import SkyMoEForConditionalGeneration

    is_view = batch.pop("cda_view")
    # no KV cache: a training pass would fill one for nothing (and a compiled layer would compile twice, for its
    # first write and for the later ones)
    output = model(**batch, use_cache=False,
                   logits_to_keep=SkyMoEForConditionalGeneration.supervised_positions(batch["labels"]))
    return output, is_view, batch


def _check_finite(accelerator, output, position: TrainingPosition) -> dict[str, float]:
    """Mean of every loss term and of the total over processes; a non-finite one stops the run on every process at once.

    The reduced vector has one slot per known term (with a presence count), so
    processes whose batches yield different sets of terms still agree on its shape.
    """
    names = [*LOSS_TERMS, "total"]
    terms = {**output.loss_terms, "total": output.loss}
    sums = torch.zeros(len(names), device=output.loss.device)
    counts = torch.zeros(len(names), device=output.loss.device)
    for name, value in terms.items():
        sums[names.index(name)] = value.detach().float()
        counts[names.index(name)] = 1.0
    sums, counts = accelerator.reduce(torch.stack([sums, counts]), reduction="sum").cpu()
    values = {name: (sums[i] / counts[i]).item() for i, name in enumerate(names) if counts[i] > 0}
    bad = [name for name, value in values.items() if name != "total" and not math.isfinite(value)]
    if bad or not math.isfinite(values["total"]):
        raise TrainingDivergedError(
            f"loss term(s) {', '.join(repr(b) for b in bad or ['total'])} became {[values[b] for b in bad or ['total']]} at step "
            f"{position.step + 1} (epoch {position.epoch}, batch {position.batch_in_epoch}); training stopped, "
            "the last good checkpoint is kept; lower the learning rate or check the data"
        )
    return values


class _Window:
    """Running sums between two log lines."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.sums: dict[str, float] = {}
        self.count = 0
        self.samples = 0
        self.task_acc: list[float] = []
        self.gran_acc: list[float] = []
        self.load = None
        self.start = time.perf_counter()

    def add(self, values: dict[str, float], samples: int, output, batch: dict, is_view: torch.Tensor) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        self.samples += samples
        real = ~is_view.to(batch["input_ids"].device)
        task = router_accuracy(_rows(output.task_logits, real), _rows(batch.get("task_labels"), real))
        gran = router_accuracy(output.granularity_logits, batch.get("granularity_labels"))
        if task is not None:
            self.task_acc.append(task)
        if gran is not None:
            self.gran_acc.append(gran)
        if getattr(output, "expert_load", None) is not None:
            self.load = output.expert_load.detach() if self.load is None else self.load + output.expert_load.detach()

    def flush(self, group_names: list[str], lrs: list[float]) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        scalars = {f"loss/{k}": v / self.count for k, v in self.sums.items()}
        scalars.update({f"lr/{name}": lr for name, lr in zip(group_names, lrs)})
        scalars["samples_per_s"] = self.samples / elapsed if elapsed > 0 else 0.0
        if self.task_acc:
            scalars["router/task_accuracy"] = sum(self.task_acc) / len(self.task_acc)
        if self.gran_acc:
            scalars["router/granularity_accuracy"] = sum(self.gran_acc) / len(self.gran_acc)
        scalars.update(expert_load_stats(self.load / self.count if self.load is not None else None))
        self.reset()
        return scalars


def _rows(tensor, mask):
    return None if tensor is None else tensor[mask]


