"""The training loop: one code path on ``accelerate`` for CPU, DDP, FSDP and DeepSpeed.

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from skymoe.config import TrainConfig, save_config
from skymoe.train import checkpoint as ckpt
from skymoe.train.errors import TrainingDivergedError, TrainingError
from skymoe.train.losses import KNOWN_TERMS, granularity_info_nce, loss_terms, total_loss
from skymoe.train.metrics import MetricsLogger, expert_load_stats, peak_memory_mb, router_accuracy, truncate_metrics


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
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    model: Any = field(default=None, repr=False, compare=False)

    def summary(self) -> dict:
        """The JSON-able numbers (no model, no loss history)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "loss_history")}


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


@dataclass
class _Run:
    """Everything the loop needs, after accelerate.prepare."""

    model: Any
    processor: Any
    optimizer: Any
    scheduler: Any
    loader: Any
    group_names: list[str]
    total_steps: int


def _train(cfg: TrainConfig, output_dir: Path, resume: bool, position: TrainingPosition) -> TrainResult:
    from accelerate.utils import set_seed

    from skymoe.train.accelerator import make_accelerator

    cfg.validate()
    resume_from = _resume_point(output_dir / "checkpoints", resume)
    if resume_from is not None:
        _check_same_run(cfg, output_dir / "train_config.yaml")
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
    loss_history = _loop(cfg, accelerator, run, position, output_dir)
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
        loss_history=loss_history,
        model=unwrapped,
    )
    if accelerator.is_main_process:
        (output_dir / "train_summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
        accelerator.print(
            f"stage {cfg.stage} done: {result.steps} steps in {seconds:.1f}s, "
            f"{result.samples_per_second:.2f} samples/s, peak memory {result.peak_memory_mb:.0f} MiB, "
            f"loss {_fmt(result.first_loss)} -> {_fmt(result.final_loss)}; model in {model_dir}"
        )
    return result


def _prepare(cfg: TrainConfig, accelerator, resume_from: Path | None) -> _Run:
    """Data, model (built, or loaded and upcycled), optimiser, schedule and loader, prepared by accelerate."""
    from torch.utils.data import DataLoader
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    from skymoe.data.imagery import load_image
    from skymoe.model.build import enable_activation_checkpointing
    from skymoe.model.feature_source import feature_source
    from skymoe.train import stages
    from skymoe.train.data import MixSampler, TrainCollator, TrainDataset, load_mix

    parts = load_mix(cfg.data)
    model, processor = stages.build(cfg, parts, resume_from)
    source = feature_source(model, processor, cache=cfg.data.feature_cache, device=accelerator.device, root=cfg.data.feature_cache_dir)
    parts = stages.check_samples(parts, processor, cfg.data.on_error, load_image, source)
    dataset = TrainDataset(parts, cfg.cda, cfg.seed, load_image, blind=processor.blind)
    sampler = MixSampler([len(p.samples) for p in parts], [p.weight for p in parts], cfg.seed, [p.groups() for p in parts])
    collator = TrainCollator(processor, source)
    if cfg.stage == 2:
        check_batch = collator([dataset[(0, i, i)] for i in range(min(2, len(dataset)))])
        model = stages.upcycle_checked(model, cfg, check_batch)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    batches_per_epoch = len(sampler) // (cfg.batch_size * accelerator.num_processes)
    if batches_per_epoch == 0:
        raise TrainingError(
            f"the dataset mix draws {len(sampler)} samples per epoch, fewer than one global batch "
            f"({cfg.batch_size} x {accelerator.num_processes} processes)"
        )
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(batches_per_epoch / cfg.grad_accum)

    groups = stages.param_groups(model, cfg)
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
    if cfg.optim.schedule == "cosine":
        scheduler = get_cosine_schedule_with_warmup(optimizer, cfg.optim.warmup_steps, total_steps)
    else:
        scheduler = get_constant_schedule_with_warmup(optimizer, cfg.optim.warmup_steps)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collator, drop_last=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    return _Run(model, processor, optimizer, scheduler, loader, [g["name"] for g in groups], total_steps)


def _loop(cfg: TrainConfig, accelerator, run: _Run, position: TrainingPosition, output_dir: Path) -> list[tuple[int, float]]:
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
                    terms, output, is_view, batch = _forward(model, batch, cfg)
                    values = _check_finite(accelerator, terms, position)
                    accelerator.backward(total_loss(terms))
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


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# What a resumed run may change: how long it runs and how it logs and checkpoints. Anything else would
# make the continued run differ from the one its checkpoint belongs to (and train_config.yaml lie about it).
RESUMABLE_CHANGES = {"max_steps", "epochs", "log_every", "checkpoint_every", "keep_last"}


def _check_same_run(cfg: TrainConfig, saved_path: Path) -> None:
    import yaml

    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
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


def _resume_point(checkpoints_dir: Path, resume: bool) -> Path | None:
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


def _forward(model, batch: dict, cfg: TrainConfig):
    """One forward pass; returns the loss terms, the output, which rows are CDA views, and the model batch."""
    is_view = batch.pop("cda_view")
    output = model(**batch, logits_to_keep=_supervised_positions(model, batch["labels"]))
    cda = None
    if cfg.stage == 2 and cfg.cda.enabled and output.routing_embedding is not None:
        cda = granularity_info_nce(output.routing_embedding, batch["granularity_labels"], cfg.cda.temperature)
    return loss_terms(output, cfg.loss, cda), output, is_view, batch


def _supervised_positions(model, labels):
    from skymoe.model.modeling import SkyMoEForConditionalGeneration

    return SkyMoEForConditionalGeneration.supervised_positions(labels)


def _check_finite(accelerator, terms: dict, position: TrainingPosition) -> dict[str, float]:
    """Mean of every term over processes; a non-finite term stops the run on every process at once.

    The reduced vector has one slot per known term (with a presence count), so
    processes whose batches yield different sets of terms still agree on its shape.
    """
    device = next(iter(terms.values()))[0].device
    sums = torch.zeros(len(KNOWN_TERMS), device=device)
    counts = torch.zeros(len(KNOWN_TERMS), device=device)
    for name, (value, _) in terms.items():
        sums[KNOWN_TERMS.index(name)] = value.detach().float()
        counts[KNOWN_TERMS.index(name)] = 1.0
    sums, counts = accelerator.reduce(torch.stack([sums, counts]), reduction="sum").cpu()
    values = {name: (sums[i] / counts[i]).item() for i, name in enumerate(KNOWN_TERMS) if counts[i] > 0}
    bad = [name for name, value in values.items() if not math.isfinite(value)]
    if bad:
        raise TrainingDivergedError(
            f"loss term(s) {', '.join(repr(b) for b in bad)} became {[values[b] for b in bad]} at step "
            f"{position.step + 1} (epoch {position.epoch}, batch {position.batch_in_epoch}); training stopped, "
            "the last good checkpoint is kept; lower the learning rate or check the data"
        )
    values["total"] = sum(values[name] * weight for name, (_, weight) in terms.items())
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
