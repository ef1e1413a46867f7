"""The training configuration: one ``TrainConfig`` per run, from a YAML file and ``key=value`` overrides.

The ``model:`` section is the model's own schema (:class:`skymoe.model.configuration.ModelSettings`,
validated by the checks SkyMoEConfig makes); the other sections are training settings.
YAML files under ``configs/`` fill it; overrides patch it (``optim.lr=3e-4``).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from skymoe.yaml_settings import apply_overrides, from_dict, read_yaml
from skymoe.errors import ConfigError
from skymoe.model.configuration import STAGE1_ONLY, ModelSettings


@dataclass
class DatasetSpec:
    """One entry of the mix: an embedded dataset ``name``, a JSONL ``path``, or labels in a ``format``
    (converted at start-up like ``skymoe data convert``: :mod:`skymoe.data.convert`)."""

    name: str | None = None
    path: str | None = None
    # format entries: format + labels (the label file/folder) and the convert options they need
    format: str | None = None
    labels: str | None = None
    images: str | None = None
    raster: str | None = None
    classes: str | None = None
    tasks: list[str] | None = None
    tile: int | None = None
    overlap: int = 0
    bands: list[int] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # label_field, point_size, dataset, seed, min_share
    split: str = "train"
    # samples drawn per epoch = round(weight * len(dataset)); 2.0 = twice through, 0.5 = half
    weight: float = 1.0
    limit: int | None = None
    # "task": the entry's draws are shared equally by its tasks (a VQA-heavy set still teaches grounding)
    balance: str | None = None
    # with balance "task": a task's share relative to the others' (a task not named here: 1.0)
    task_weights: dict[str, float] | None = None


@dataclass
class DataSection:
    mix: list[DatasetSpec] = field(default_factory=list)
    on_error: str = "raise"
    max_length: int = 256
    # Cache the frozen tower's features per image view (skymoe.data.feature_cache); ignored when the tower trains.
    feature_cache: bool = True
    feature_cache_dir: str | None = None  # default $SKYMOE_CACHE/features; size bound: SKYMOE_FEATURE_CACHE_MB
    # The blind control: every image replaced by one constant image (stage 1; kept by the saved processor).
    blind: bool = False


@dataclass
class OptimSection:
    lr: float = 1e-3
    # per-module learning rates; null = use ``lr``
    projector_lr: float | None = None
    lm_lr: float | None = None
    experts_lr: float | None = None
    router_lr: float | None = None
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 0
    schedule: str = "cosine"
    max_grad_norm: float | None = 1.0
    train_projector: bool = True
    # stage 2: also train the LLM's own weights (what a one-stage run needs: stage 2 from an untrained stage-1 model)
    train_lm: bool = False


@dataclass
class CDASection:
    """Context-disentangled augmentation (see :mod:`skymoe.data.cda`): the views. Their InfoNCE term is the model's
    (``model.loss.cda``, ``model.loss.cda_temperature``); with ``enabled: false`` a stage-2 model is saved with
    ``loss.cda: 0``, the term it was trained without."""

    MOVED: ClassVar[dict[str, str]] = {"temperature": "model.loss.cda_temperature"}

    enabled: bool = False
    # probability that a sample contributes a local view (crop) paired with its global view
    pair_prob: float = 0.125
    cutout_prob: float = 0.3
    max_cutout: int = 2
    attribute_prob: float = 0.3
    # fixed augmented versions per sample (each draw picks one), so a feature cache computes each once
    variants: int = 4


@dataclass
class TrainConfig:
    """One run: the model (``model:``, :class:`ModelSettings`) and how it trains: data, optimiser, schedule,
    stage, CDA views, precision and checkpointing."""

    stage: int = 1
    seed: int = 0
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    cda: CDASection = field(default_factory=CDASection)
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 1
    # auto: bf16 where the device multiplies bfloat16 in hardware (a GPU that supports it, a CPU with AMX), else fp32
    precision: str = "fp32"
    activation_checkpointing: bool = False
    # torch.compile the LLM's decoder layers, expert layers in the rank-space LoRA form whole
    # (skymoe.model.build.compile_decoder_layers): a compile at the first steps (cached on disk for later runs) for
    # faster steps, so it pays off in long runs (train_throughput.py)
    compile: bool = False
    checkpoint_every: int = 100
    keep_last: int = 2
    log_every: int = 10

    def validate(self) -> "TrainConfig":
        """Check value ranges and cross-field rules the types cannot express."""
        _choice("stage", self.stage, (1, 2))
        _choice("precision", self.precision, ("fp32", "bf16", "auto"))
        _choice("optim.schedule", self.optim.schedule, ("cosine", "constant"))
        _choice("data.on_error", self.data.on_error, ("raise", "skip"))
        if self.cda.variants < 1:
            raise ConfigError(f"'cda.variants' must be >= 1, got {self.cda.variants}")
        for key in ("batch_size", "grad_accum", "epochs", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be >= 1, got {getattr(self, key)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"'max_steps' must be >= 1, got {self.max_steps}")
        try:
            self.model.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        _check_stage_model(self.stage, self.model)
        for i, spec in enumerate(self.data.mix):
            _check_mix_entry(i, spec)
            if spec.weight <= 0:
                raise ConfigError(f"'data.mix[{i}].weight' must be > 0, got {spec.weight}")
            if spec.balance not in (None, "task"):
                raise ConfigError(f"'data.mix[{i}].balance' must be null or 'task', got {spec.balance!r}")
            _check_task_weights(i, spec)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_task_weights(i: int, spec: DatasetSpec) -> None:
    from skymoe.data.schema import Task

    if not spec.task_weights:  # a non-mapping is refused when the YAML is read
        return
    if spec.balance != "task":
        raise ConfigError(f"'data.mix[{i}].task_weights' shares a task-balanced entry's draws: set balance: task")
    tasks = [t.value for t in Task]
    for task, weight in spec.task_weights.items():
        if task not in tasks:
            raise ConfigError(f"'data.mix[{i}].task_weights.{task}': no such task; expected one of {tasks}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise ConfigError(f"'data.mix[{i}].task_weights.{task}' must be a finite number > 0, got {weight!r}")


def _check_stage_model(stage: int, model: ModelSettings) -> None:
    """Stage 1 builds a dense model; stage 2 upcycles ``init_from`` and keeps its architecture."""
    experts = model.moe.num_experts
    if stage == 1 and experts:
        raise ConfigError(f"'model.moe.num_experts' is {experts}: stage 1 builds the dense model (0); stage 2 upcycles it")
    if stage == 1:
        return
    if not model.init_from:
        raise ConfigError("'model.init_from' is required for stage 2 (a stage-1 output directory)")
    if experts < 1:
        raise ConfigError(f"'model.moe.num_experts' must be >= 1 for stage 2 (it upcycles into experts), got {experts}")
    defaults = ModelSettings()
    changed = [key for key in STAGE1_ONLY if getattr(model, key) != getattr(defaults, key)]
    changed += ["router.hidden_size"] * (model.router.hidden_size != defaults.router.hidden_size)
    if changed:
        raise ConfigError(f"{', '.join(f'model.{k}' for k in changed)}: stage 2 keeps the architecture of the stage-1 "
                          f"model in model.init_from; remove these keys (stage 2 reads model.moe, model.loss, "
                          "model.router.jitter_noise and model.location_sigma)")


def _check_mix_entry(i: int, spec: DatasetSpec) -> None:
    given = [k for k in ("name", "path", "format") if getattr(spec, k) is not None]
    if len(given) != 1:
        raise ConfigError(f"'data.mix[{i}]' needs exactly one of 'name' (embedded dataset), 'path' (JSONL file) or 'format' (labels); got {given or 'none'}")
    if spec.format is None:
        return
    from skymoe.data.convert import BOX_TASKS, FORMATS, MIX_OPTIONS

    _choice(f"data.mix[{i}].format", spec.format, tuple(FORMATS))
    unknown = sorted(set(spec.options) - set(MIX_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown keys {unknown} under 'data.mix[{i}].options'; allowed: {', '.join(MIX_OPTIONS)}")
    if not spec.labels:
        raise ConfigError(f"'data.mix[{i}].labels' is required with 'format' (the label file or folder, or the dataset root)")
    for task in spec.tasks or []:
        _choice(f"data.mix[{i}].tasks[]", task, BOX_TASKS)


def _choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"'{key}' must be one of {list(allowed)}, got {value!r}")


def parse_config(data: dict) -> TrainConfig:
    """A TrainConfig from plain nested data (a YAML file's), type-checked and validated.

    ``loss:`` at the top level is a documented alias of ``model.loss:`` (``loss.load_balance=0.037``).
    """
    data = dict(data)
    if "loss" in data:
        model = data["model"] = dict(data.get("model") or {})
        given = model.get("loss") or {}
        alias = data.pop("loss") or {}
        clash = sorted(k for k in set(alias) & set(given) if alias[k] != given[k])
        if clash:
            raise ConfigError(f"'loss.{clash[0]}' and 'model.loss.{clash[0]}' disagree; 'loss:' is an alias of 'model.loss:', set one")
        model["loss"] = {**given, **alias}
    return from_dict(TrainConfig, data).validate()


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply overrides, type-check, validate.

    Errors name the file. Relative paths (``data.mix[].path``, ``model.init_from``, checkpoint
    directories) are taken relative to the working directory, like any CLI path.
    """
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, overrides or [])
    try:
        return parse_config(data)
    except ConfigError as exc:
        if path is None:
            raise
        raise ConfigError(f"{path}: {exc}") from None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
