"""A training run: one code path on ``accelerate`` for CPU, DDP, FSDP and DeepSpeed (the steps: :mod:`skymoe.train.loop`).

``train(cfg, output_dir, resume=False)`` runs stage 1 or stage 2 and leaves::

    output_dir/
      model/            final model + processor (save_pretrained layout)
      checkpoints/      step-XXXXXXXX/ (accelerate state + processor + manifest.json), last N kept
      metrics.jsonl     one line per logged step
      tb/               TensorBoard scalars
      train_config.yaml the resolved config
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from skymoe.train import checkpoint as ckpt
from skymoe.train.config import TrainConfig, save_config
from skymoe.train.errors import TrainingError
from skymoe.train.loop import Run, TrainingPosition, run_loop
from skymoe.train.metrics import peak_memory_mb, truncate_metrics
from skymoe.train.resume import check_same_run, resume_point


@dataclass
class TrainResult:
    output_dir: str
    model_dir: str
    stage: int
    steps: int
    samples_seen: int
    seconds: float
    samples_per_second: float
    peak_memory_mb: float
    first_loss: float | None
    final_loss: float | None
    resumed_from: str | None = None
    precision: str = "fp32"  # what the run trained in (``auto`` resolved)
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    model: Any = field(default=None, repr=False, compare=False)

    def summary(self) -> dict:
        """The JSON-able numbers (no model, no loss history)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "loss_history")}


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; the message says where it stopped and how to continue.

    A KeyboardInterrupt still (callers that catch those keep working); nothing is
    written on interrupt, the newest checkpoint is the atomic one already on disk.
    """

    def __init__(self, step: int | None, checkpoints_dir: Path):
        where = "before the first training step" if step is None else f"at step {step}"
        existing = ckpt.list_checkpoints(checkpoints_dir)
        if existing:
            last = existing[-1]
            advice = f"the last checkpoint is step {int(last.name[len(ckpt.PREFIX):])} ({last}): re-run with --resume to continue"
        else:
            advice = "no checkpoint was written yet: re-run to start again"
        super().__init__(f"interrupted {where}; {advice}")


def train(cfg: TrainConfig, output_dir: str | Path, resume: bool = False) -> TrainResult:
    """Train stage ``cfg.stage``; with ``resume`` continue from the newest good checkpoint in ``output_dir``.

    Ctrl-C raises :class:`TrainingInterrupted` naming the step and the checkpoint to resume from.
    """
    position = TrainingPosition()
    try:
        return _train(cfg, Path(output_dir), resume, position)
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt:
        step = position.step if position.step or position.samples_seen else None
        raise TrainingInterrupted(step, Path(output_dir) / "checkpoints") from None
    finally:
        _release_accelerate_state()


def _train(cfg: TrainConfig, output_dir: Path, resume: bool, position: TrainingPosition) -> TrainResult:
    from accelerate.utils import set_seed

    from skymoe.train.accelerator import make_accelerator, resolve_precision

    cfg.validate()
    # the run's config holds the precision it trains in: a resume on a machine where ``auto`` means another is refused
    cfg = replace(cfg, precision=resolve_precision(cfg.precision))
    resume_from = resume_point(output_dir / "checkpoints", resume)
    if resume_from is not None:
        check_same_run(cfg, output_dir / "train_config.yaml")
    accelerator = make_accelerator(cfg.precision, cfg.grad_accum)
    set_seed(cfg.seed)
    run = _prepare(cfg, accelerator, resume_from)  # every bad-input error happens here, before any step
    accelerator.register_for_checkpointing(position)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} (step {position.step})")
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, output_dir / "train_config.yaml")
        truncate_metrics(output_dir / "metrics.jsonl", position.step)

    start, start_samples = time.perf_counter(), position.samples_seen
    loss_history = run_loop(cfg, accelerator, run, position, output_dir)
    seconds = time.perf_counter() - start

    model_dir = output_dir / "model"
    unwrapped = accelerator.unwrap_model(run.model)
    _save_final(accelerator, run.model, unwrapped, run.processor, model_dir)
    result = TrainResult(
        output_dir=str(output_dir),
        model_dir=str(model_dir),
        stage=cfg.stage,
        steps=position.step,
        samples_seen=position.samples_seen,
        seconds=seconds,
        samples_per_second=(position.samples_seen - start_samples) / seconds if seconds > 0 else 0.0,
        peak_memory_mb=peak_memory_mb(),
        first_loss=loss_history[0][1] if loss_history else None,
        final_loss=loss_history[-1][1] if loss_history else None,
        resumed_from=str(resume_from) if resume_from else None,
        precision=cfg.precision,
        loss_history=loss_history,
        model=unwrapped,
    )
    if accelerator.is_main_process:
        (output_dir / "train_summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
        accelerator.print(
            f"stage {cfg.stage} done: {result.steps} steps in {seconds:.1f}s ({cfg.precision}), "
            f"{result.samples_per_second:.2f} samples/s, peak memory {result.peak_memory_mb:.0f} MiB, "
            f"loss {_fmt(result.first_loss)} -> {_fmt(result.final_loss)}; model in {model_dir}"
        )
    return result


def _prepare(cfg: TrainConfig, accelerator, resume_from: Path | None) -> Run:
    """Data, model (built, or loaded and upcycled), optimiser, schedule and loader, prepared by accelerate."""
    from torch.utils.data import DataLoader
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    from skymoe.data.imagery import load_image
    from skymoe.model.build import compile_decoder_layers, enable_activation_checkpointing
    from skymoe.model.feature_source import feature_source
    from skymoe.train import stages
    from skymoe.train.data import MixSampler, TrainCollator, TrainDataset, load_mix

    parts = load_mix(cfg.data)
    model, processor = stages.build(cfg, parts, resume_from)
    source = feature_source(model, processor, cache=cfg.data.feature_cache, device=accelerator.device, root=cfg.data.feature_cache_dir)
    parts = stages.check_samples(parts, processor, cfg.data.on_error, load_image, source)
    dataset = TrainDataset(parts, cfg.cda, cfg.seed, load_image, blind=processor.blind)
    sampler = MixSampler([len(p.samples) for p in parts], [p.weight for p in parts], cfg.seed, [p.groups() for p in parts])
    evidence_grid = math.isqrt(model.config.num_image_tokens) if model.config.box_head["evidence"] else None
    collator = TrainCollator(processor, source, evidence_grid)
    if cfg.stage == 2:
        check_batch = collator([dataset[(0, i, i)] for i in range(min(2, len(dataset)))])
        model = stages.upcycle_checked(model, cfg, check_batch, processor.tokenizer)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.compile:
        # Graphs compiled for an earlier run's model in this process (the demo trains three) count against dynamo's
        # recompile limit: past it this run's layers would fall back to eager behind a failing guard check per call.
        torch.compiler.reset()
        accelerator.print(f"torch.compile: {compile_decoder_layers(model)} decoder layers (compiled at the first steps)")
    batches_per_epoch = len(sampler) // (cfg.batch_size * accelerator.num_processes)
    if batches_per_epoch == 0:
        raise TrainingError(
            f"the dataset mix draws {len(sampler)} samples per epoch, fewer than one global batch "
            f"({cfg.batch_size} x {accelerator.num_processes} processes)"
        )
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)

    groups = stages.param_groups(model, cfg)
    # fused: one kernel per group rather than a Python loop over the demo model's ~200 tensors
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay,
                                  fused=True)
    if cfg.optim.schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, total_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, cfg.optim.warmup_steps)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collator, drop_last=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    return Run(model, processor, optimizer, scheduler, loader, [g["name"] for g in groups], total_steps)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _save_final(accelerator, model, unwrapped, processor, model_dir: Path) -> None:
    """save_pretrained through accelerate (gathers FSDP/ZeRO-3 shards), then the processor."""
    state_dict = accelerator.get_state_dict(model)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.save_pretrained(model_dir, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(model_dir)
    accelerator.wait_for_everyone()


def _release_accelerate_state() -> None:
    """Forget accelerate's process-wide settings (precision, accumulation) once a run is over.

    accelerate keeps them in singletons that refuse a different value later, so a
    second ``train()`` in the same process (stage 2 after stage 1 in the demo, or
    bf16 after fp32) would fail. The process group itself (PartialState) is kept.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
