"""Typed training configuration: dataclasses, YAML files and dotted overrides.

One ``TrainConfig`` describes a whole run (model, data mix, stage, optimiser,
CDA, loss weights). YAML files under ``configs/`` fill it; ``key=value``
overrides from the command line patch it (``optim.lr=3e-4``). Every key is
checked against the dataclass fields and every value against the field's type,
so a typo fails before any work starts, naming the key and the allowed ones.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skymoe.errors import ConfigError


@dataclass
class ModelSection:
    """What to train.

    Stage 1 builds a model. ``vision`` is a local Hugging Face vision-model
    directory (CLIP or SigLIP: the dual encoder or its vision model; ViT, DINOv2),
    ``"efficientnet-lite0"`` (real ImageNet weights from the assets registry), or
    ``null`` for a from-scratch tower of type ``vision_type`` and the ``vision_*``
    sizes. ``llm`` is a local causal-LM directory (Llama, Qwen2, Gemma 3 ...) or
    ``null`` for a from-scratch ``llm_type`` LM of the sizes below, whose
    tokenizer is then trained on the mix's text. Stage 2 ignores all of this and
    starts from ``init_from``, a stage-1 output directory.
    """

    init_from: str | None = None
    vision: str | None = None
    vision_type: str = "vit"
    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    llm: str | None = None
    llm_type: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 1000
    # EfficientNet-Lite: tokens from the last block at these output strides (e.g. [8, 16]); null = the head
    vision_feature_strides: list[int] | None = None
    projector: str = "mlp2x_gelu"
    projector_norm: bool = False  # LayerNorm on the tower features before the projector
    position_code: bool = False  # add each visual token's grid-position code (pairs with the box location tokens)
    router_hidden_size: int = 64
    num_route_tokens: int = 2
    # stage 1: "full" trains the whole (small) LLM, "lora" a dense LoRA adapter on the frozen LLM
    adapter: str = "full"
    lora_rank: int = 8
    lora_targets: list[str] = field(default_factory=lambda: ["mlp"])  # "mlp" = every FFN linear
    # stage 2: mixture of experts
    num_experts: int = 4
    top_k: int = 2
    expert_type: str = "lora"
    routing: str = "token"
    moe_layers: list[int] | None = None
    # further SkyMoEConfig fields, passed verbatim (e.g. vision_feature_layer: -2)
    extra: dict[str, Any] = field(default_factory=dict)


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


@dataclass
class CDASection:
    """Context-disentangled augmentation (see :mod:`skymoe.data.cda`)."""

    enabled: bool = False
    # probability that a sample contributes a local view (crop) paired with its global view
    pair_prob: float = 0.125
    cutout_prob: float = 0.3
    max_cutout: int = 2
    attribute_prob: float = 0.3
    temperature: float = 0.3
    # fixed augmented versions per sample (each draw picks one), so a feature cache computes each once
    variants: int = 4


@dataclass
class LossSection:
    load_balance: float = 0.01
    router_z: float = 0.001
    router_ce: float = 0.1
    cda: float = 0.05


@dataclass
class TrainConfig:
    stage: int = 1
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    cda: CDASection = field(default_factory=CDASection)
    loss: LossSection = field(default_factory=LossSection)
    max_steps: int | None = None
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 1
    precision: str = "fp32"
    activation_checkpointing: bool = False
    checkpoint_every: int = 100
    keep_last: int = 2
    log_every: int = 10

    def validate(self) -> "TrainConfig":
        """Check value ranges and cross-field rules the types cannot express."""
        _choice("stage", self.stage, (1, 2))
        _choice("precision", self.precision, ("fp32", "bf16"))
        _choice("optim.schedule", self.optim.schedule, ("cosine", "constant"))
        _choice("model.adapter", self.model.adapter, ("full", "lora"))
        _choice("model.expert_type", self.model.expert_type, ("lora", "ffn"))
        _choice("model.routing", self.model.routing, ("token", "sequence"))
        _choice("data.on_error", self.data.on_error, ("raise", "skip"))
        if self.cda.variants < 1:
            raise ConfigError(f"'cda.variants' must be >= 1, got {self.cda.variants}")
        for key in ("batch_size", "grad_accum", "epochs", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be >= 1, got {getattr(self, key)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"'max_steps' must be >= 1, got {self.max_steps}")
        if self.stage == 2:
            if not self.model.init_from:
                raise ConfigError("'model.init_from' is required for stage 2 (a stage-1 output directory)")
            if self.model.num_experts < 1:
                raise ConfigError(f"'model.num_experts' must be >= 1 for stage 2 (it upcycles into experts), got {self.model.num_experts}")
            if not 1 <= self.model.top_k <= self.model.num_experts:
                raise ConfigError(
                    f"'model.top_k' must be in 1..model.num_experts={self.model.num_experts}, got {self.model.top_k}"
                )
        for i, spec in enumerate(self.data.mix):
            _check_mix_entry(i, spec)
            if spec.weight <= 0:
                raise ConfigError(f"'data.mix[{i}].weight' must be > 0, got {spec.weight}")
            if spec.balance not in (None, "task"):
                raise ConfigError(f"'data.mix[{i}].balance' must be null or 'task', got {spec.balance!r}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


# ---------------------------------------------------------------- building from plain data


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix or '<root>'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            where = f"under '{prefix}'" if prefix else "at the top level"
            raise ConfigError(f"unknown key '{_join(prefix, key)}'; allowed keys {where}: {', '.join(names)}")
    return cls(**{key: _coerce(hints[key], value, _join(prefix, key)) for key, value in data.items()})


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise a ConfigError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        # YAML 1.1 reads "1e-4" as a string; accept anything float() parses exactly
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"'{key}' must be of type {tp.__name__}, got {value!r} ({type(value).__name__})")


# ---------------------------------------------------------------- overrides and files


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Patch nested ``data`` in place with ``a.b.c=value`` strings (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply overrides, type-check, validate.

    Relative paths (``data.mix[].path``, ``model.init_from``, checkpoint
    directories) are taken relative to the working directory, like any CLI path.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    apply_overrides(data, overrides or [])
    return from_dict(TrainConfig, data).validate()


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
