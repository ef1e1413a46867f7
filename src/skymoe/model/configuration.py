"""SkyMoEConfig and its settings: the one schema of the model, shared by the config and the YAML ``model:`` section.

``vision_config`` and ``text_config`` are ordinary transformers configs (any
vision model / causal LM, or our EfficientNet-Lite config); ``projector``,
``router``, ``moe`` and ``loss`` are small JSON dicts whose keys and defaults are
the dataclasses below. :func:`resolve_settings` is their one validator: the
config calls it on construction, the training config on the YAML.
:class:`ModelSettings` is the YAML ``model:`` section: these four plus the
towers to build (stage 1) and the stage-1 folder to upcycle (stage 2).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from skymoe.yaml_settings import unknown_key_message


@dataclass
class ProjectorSettings:
    type: str = "mlp2x_gelu"  # "mlp2x_gelu" | "resampler" | "qformer" (InstructBLIP's instruction-aware Q-Former)
    num_queries: int = 32  # resampler/qformer: learned queries = visual tokens given to the LLM
    num_layers: int = 2  # resampler/qformer blocks
    num_heads: int = 4
    instruction_aware: bool = False  # resampler queries also attend to the instruction (a qformer always does)
    cross_attention_every: int = 2  # qformer: blocks 0, k, 2k.. cross-attend to the image (InstructBLIP's cross_attention_freq)
    hidden_size: int | None = None  # resampler/qformer block width; null = the LLM's
    norm: bool = False  # LayerNorm on the tower's features first (mid-level CNN maps are not normalised)
    position_code: bool = False  # mlp2x_gelu: add each token's grid-centre code (skymoe.model.location)


@dataclass
class RouterSettings:
    hidden_size: int = 128  # size of the routing embedding r (from pooled instruction embeddings + visual tokens)
    jitter_noise: float = 0.0  # multiplicative gate-input noise in training (Switch)


@dataclass
class MoESettings:
    num_experts: int = 0  # 0 = dense stage-1 model
    top_k: int = 2
    expert_type: str = "lora"  # "lora" | "ffn" | "llm" (RS-MoE: each expert a full LLM pass with its own adapter)
    routing: str = "token"  # "token" | "sequence"
    moe_layers: list[int] | None = None  # decoder layer indices; None = every layer
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["mlp"])  # "mlp" = every linear of the FFN
    dense_lora: bool = True  # dense model (num_experts=0): one LoRA adapter on the same linears
    # llm experts: one text per expert (RS-MoE's theme / objects / relations) starting its routing instruction
    expert_templates: list[str] | None = None
    # "router": the router's gate weighs the experts; "uniform": all, equally (expert LLMs; RS-MoE's router-off ablation)
    gate: str = "router"
    # llm experts: one local causal-LM folder per expert (skymoe.model.expert_models), instead of adapters on the
    # base LLM; each must share the base's hidden size and tokenizer. Read when stage 2 upcycles.
    expert_models: list[str] | None = None


@dataclass
class BoxHeadSettings:
    """A grounding answer's first box read off the visual grid (skymoe.model.box_head; needs a grid projector and
    the location tokens); ``evidence``: the question's evidence added to the answer (skymoe.model.evidence);
    ``zoom``: the evidence also reads the tower's features of the instruction's box, cropped (skymoe.data.zoom), at
    ``zoom_size`` pixels (None: the image size; at least the tower's patch size or stride)."""

    enabled: bool = False
    hidden_size: int = 128
    evidence: bool = False
    zoom: bool = False
    zoom_size: int | None = None


@dataclass
class LossSettings:
    """Weights of the terms the model adds to the LM cross-entropy in ``output.loss`` (Mixtral's router_aux_loss_coef)."""

    load_balance: float = 0.01
    router_z: float = 0.001
    router_ce: float = 0.1  # task and granularity cross-entropy of the router, each
    cda: float = 0.05  # granularity InfoNCE over routing embeddings (an MoE model; needs granularity labels)
    cda_temperature: float = 0.3  # soft: the routing embedding must also keep the tasks apart
    # box_head's term. The head only reads the model and Adam ignores a loss's scale: the weight sets its share of the
    # gradient norm that max_grad_norm clips, which it would take from the LLM
    box: float = 0.1
    evidence: float = 5.0  # box_head.evidence's per-cell cross-entropy (5 over 1: benchmarks/evidence_probe.py)


SETTINGS = {"projector": ProjectorSettings, "router": RouterSettings, "moe": MoESettings, "loss": LossSettings,
            "box_head": BoxHeadSettings}
CHOICES = {
    ("projector", "type"): ("mlp2x_gelu", "resampler", "qformer"),
    ("moe", "expert_type"): ("lora", "ffn", "llm"),
    ("moe", "routing"): ("token", "sequence"),
    ("moe", "gate"): ("router", "uniform"),
}


def resolve_settings(name: str, value: dict | None, prefix: str = ""):
    """Fill defaults and validate one settings dict; returns the dataclass instance. Errors name ``prefix + name``."""
    cls = SETTINGS[name]
    value = dict(value or {})
    allowed = [f.name for f in fields(cls)]
    for key in value:
        if key not in allowed:
            raise ValueError(unknown_key_message(f"{prefix}{name}.{key}", prefix + name, allowed))
    settings = cls(**value)
    for (section, key), options in CHOICES.items():
        if section == name and getattr(settings, key) not in options:
            raise ValueError(f"'{prefix}{name}.{key}' = {getattr(settings, key)!r}; expected one of {list(options)}")
    if name == "projector":
        _check_projector(settings, prefix)
    if name == "moe" and settings.num_experts < 0:
        raise ValueError(f"'{prefix}moe.num_experts' must be >= 0 (0 = dense), got {settings.num_experts}")
    if name == "moe" and settings.num_experts and not 1 <= settings.top_k <= settings.num_experts:
        raise ValueError(f"'{prefix}moe.top_k' = {settings.top_k} must be in 1..moe.num_experts={settings.num_experts}")
    if name == "moe":
        _check_llm_experts(settings, prefix)
    if name == "box_head" and settings.hidden_size < 1:
        raise ValueError(f"'{prefix}box_head.hidden_size' must be >= 1, got {settings.hidden_size}")
    if name == "box_head" and settings.evidence and not settings.enabled:
        raise ValueError(f"'{prefix}box_head.evidence' is part of the box head (it rides on its generation plan): set box_head.enabled too")
    if name == "box_head" and settings.zoom and not settings.evidence:
        raise ValueError(f"'{prefix}box_head.zoom' is read by the evidence head: set box_head.evidence too")
    if name == "box_head" and settings.zoom_size is not None and settings.zoom_size < 1:
        raise ValueError(f"'{prefix}box_head.zoom_size' must be >= 1 pixel (or null: the image size), got {settings.zoom_size}")
    return settings


def _check_projector(settings: ProjectorSettings, prefix: str) -> None:
    if settings.position_code and settings.type != "mlp2x_gelu":
        raise ValueError(f"'{prefix}projector.position_code' needs type mlp2x_gelu (one token per grid cell), got {settings.type!r}")
    if settings.type == "mlp2x_gelu":
        return
    for key in ("num_queries", "num_layers", "num_heads", "cross_attention_every"):
        if getattr(settings, key) < 1:
            raise ValueError(f"'{prefix}projector.{key}' must be >= 1 for type {settings.type}, got {getattr(settings, key)}")
    size = settings.hidden_size
    if size is not None and (size < 1 or size % settings.num_heads):
        raise ValueError(f"'{prefix}projector.hidden_size' = {size} must be a positive multiple of num_heads={settings.num_heads}")


def _check_llm_experts(moe: MoESettings, prefix: str) -> None:
    if moe.expert_type == "llm" and moe.routing != "sequence":
        raise ValueError(f"'{prefix}moe.expert_type' = 'llm' chooses its experts once per sample, but '{prefix}moe.routing' = "
                         f"{moe.routing!r} (the default is 'token'); set {prefix}moe.routing: sequence")
    if moe.gate == "uniform" and (moe.expert_type != "llm" or moe.top_k != moe.num_experts):
        raise ValueError(f"'{prefix}moe.gate' = 'uniform' runs every expert LLM with equal weights: it needs "
                         f"'{prefix}moe.expert_type' = 'llm' and '{prefix}moe.top_k' = moe.num_experts, got "
                         f"{moe.expert_type!r} and top_k={moe.top_k} of {moe.num_experts}")
    _check_expert_list(moe, "expert_models", moe.expert_models, "local causal-LM folders", prefix)
    _check_expert_list(moe, "expert_templates", moe.expert_templates, "non-empty texts", prefix)


def _check_expert_list(moe: MoESettings, key: str, values, what: str, prefix: str) -> None:
    """A per-expert list setting of expert LLMs: ``num_experts`` non-empty strings."""
    if values is None:
        return
    if moe.expert_type != "llm":
        raise ValueError(f"'{prefix}moe.{key}' is for expert_type 'llm', got '{prefix}moe.expert_type' = {moe.expert_type!r}")
    if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values) or len(values) != moe.num_experts:
        raise ValueError(f"'{prefix}moe.{key}' must be a list of {moe.num_experts} {what} (one per expert, "
                         f"moe.num_experts), got {values!r}")


class SkyMoEConfig(PreTrainedConfig):
    model_type = "skymoe"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="skymoe_efficientnet_lite"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector: dict | None = None
    router: dict | None = None
    moe: dict | None = None
    loss: dict | None = None
    box_head: dict | None = None
    vision_feature_layer: int = -1
    freeze_vision: bool = True
    image_size: int = 224
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    num_image_tokens: int = 49
    num_route_tokens: int = 4
    image_token_id: int = 4
    route_token_id: int = 5
    # Box location tokens (skymoe.data.boxes.LOC_TOKENS, ids from location_token_start): a target is learnt as a
    # Gaussian of width location_sigma (0-100 scale) over its axis' tokens: a near miss is a small error; 0 = plain CE.
    location_token_start: int | None = None
    location_sigma: float = 0.0
    # Where build_model() takes pretrained weights from (local dirs / asset names); from_pretrained ignores them.
    vision_pretrained: str | None = None
    text_pretrained: str | None = None
    # moe.expert_models: each expert LM's text config, read from its folder at upcycling (from_pretrained needs it)
    expert_text_configs: list[dict] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in SETTINGS:
            setattr(self, name, asdict(resolve_settings(name, getattr(self, name))))
        self.check_box_head()
        self.image_mean = list(self.image_mean or (0.485, 0.456, 0.406))
        self.image_std = list(self.image_std or (0.229, 0.224, 0.225))

    def check_box_head(self) -> None:
        if not self.box_head["enabled"]:
            return
        if self.projector["type"] != "mlp2x_gelu" or math.isqrt(self.num_image_tokens) ** 2 != self.num_image_tokens:
            raise ValueError(f"'box_head.enabled' reads a square grid of visual tokens: it needs projector.type mlp2x_gelu "
                             f"and a square token count, got {self.projector['type']!r} with {self.num_image_tokens} tokens")
        if self.moe["num_experts"] and self.moe["expert_type"] == "llm":
            raise ValueError("'box_head.enabled' reads one LLM's hidden states; expert LLMs (moe.expert_type 'llm') mix "
                             "k of them: turn one of the two off")
        patch = getattr(self.vision_config, "patch_size", 1)
        if self.box_head["zoom_size"] is not None and self.box_head["zoom_size"] < patch:
            raise ValueError(f"'box_head.zoom_size' = {self.box_head['zoom_size']} px gives the tower no token: it needs at "
                             f"least its patch size or stride, {patch} px")

    @property
    def moe_settings(self) -> MoESettings:
        return MoESettings(**self.moe)

    @property
    def projector_settings(self) -> ProjectorSettings:
        return ProjectorSettings(**self.projector)

    @property
    def router_settings(self) -> RouterSettings:
        return RouterSettings(**self.router)

    @property
    def loss_settings(self) -> LossSettings:
        return LossSettings(**self.loss)

    @property
    def moe_layer_indices(self) -> list[int]:
        num_layers = self.text_config.num_hidden_layers
        layers = self.moe["moe_layers"]
        layers = list(range(num_layers)) if layers is None else [int(i) for i in layers]
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"moe.moe_layers {bad} out of range 0..{num_layers - 1} for a {num_layers}-layer LLM")
        return layers

    @property
    def has_router(self) -> bool:
        return self.moe["num_experts"] > 0 or self.num_route_tokens > 0


@dataclass
class VisionSettings:
    """The vision tower stage 1 builds: ``pretrained`` is a local Hugging Face vision-model folder (CLIP or
    SigLIP: the dual encoder or its vision model; ViT, DINOv2), ``"efficientnet-lite0"`` (real ImageNet
    weights from the assets registry), or null for a from-scratch ``type`` tower of the sizes below."""

    pretrained: str | None = None
    type: str = "vit"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    patch_size: int = 16
    feature_strides: list[int] | None = None  # EfficientNet-Lite: the last block at these output strides; null = the head
    feature_layer: int = -1  # hidden state handed to the projector (LLaVA takes -2 of CLIP)


@dataclass
class TextSettings:
    """The LLM stage 1 builds: ``pretrained`` is a local causal-LM folder (Llama, Qwen2, Gemma 3 ...) or a GGUF
    asset, or null for a from-scratch ``type`` LM of the sizes below whose tokenizer is trained on the mix's text."""

    pretrained: str | None = None
    type: str = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    vocab_size: int = 1000


# Settings a stage-2 run takes from its stage-1 model (the architecture), not from the YAML.
STAGE1_ONLY = ("vision", "llm", "image_size", "projector", "num_route_tokens", "box_head")


@dataclass
class ModelSettings:
    """The YAML ``model:`` section. Stage 1 builds a dense model from all of it; stage 2 loads ``init_from`` (a
    stage-1 output folder), upcycles it with ``moe`` and trains with ``router.jitter_noise``, ``loss`` and
    ``location_sigma``; the architecture (:data:`STAGE1_ONLY`, ``router.hidden_size``) is the stage-1 model's."""

    # The flat keys of the old layout, and where they went.
    MOVED: ClassVar[dict[str, str]] = {
        **{old: f"model.vision.{new}" for old, new in (
            ("vision_type", "type"), ("vision_hidden_size", "hidden_size"), ("vision_layers", "num_layers"),
            ("vision_heads", "num_heads"), ("patch_size", "patch_size"), ("vision_feature_strides", "feature_strides"))},
        **{old: f"model.llm.{new}" for old, new in (
            ("llm_type", "type"), ("hidden_size", "hidden_size"), ("num_layers", "num_layers"), ("num_heads", "num_heads"),
            ("num_kv_heads", "num_kv_heads"), ("intermediate_size", "intermediate_size"), ("vocab_size", "vocab_size"))},
        **{key: f"model.moe.{key}" for key in ("lora_rank", "lora_targets", "num_experts", "top_k", "expert_type", "routing", "moe_layers")},
        "projector_norm": "model.projector.norm",
        "position_code": "model.projector.position_code",
        "router_hidden_size": "model.router.hidden_size",
        "adapter": "model.moe.dense_lora (adapter: lora = true, full = false)",
        "extra": "its own key (model.vision.feature_layer, model.router.jitter_noise, model.moe.lora_alpha ...)",
    }

    init_from: str | None = None
    image_size: int = SkyMoEConfig.image_size
    vision: VisionSettings = field(default_factory=VisionSettings)
    llm: TextSettings = field(default_factory=TextSettings)
    projector: ProjectorSettings = field(default_factory=ProjectorSettings)
    router: RouterSettings = field(default_factory=RouterSettings)
    num_route_tokens: int = SkyMoEConfig.num_route_tokens
    moe: MoESettings = field(default_factory=MoESettings)
    loss: LossSettings = field(default_factory=LossSettings)
    box_head: BoxHeadSettings = field(default_factory=BoxHeadSettings)
    location_sigma: float = SkyMoEConfig.location_sigma

    def validate(self, prefix: str = "model.") -> "ModelSettings":
        """The checks SkyMoEConfig makes, with errors naming the YAML keys."""
        for name in SETTINGS:
            resolve_settings(name, asdict(getattr(self, name)), prefix)
        return self

    def config_kwargs(self) -> dict:
        """The SkyMoEConfig fields these settings set directly (the towers are built by skymoe.model.build)."""
        return {
            **{name: asdict(getattr(self, name)) for name in SETTINGS},
            "num_route_tokens": self.num_route_tokens,
            "location_sigma": self.location_sigma,
            "vision_feature_layer": self.vision.feature_layer,
        }


class EfficientNetLiteConfig(PreTrainedConfig):
    """EfficientNet-Lite vision tower (the package ``efficientnet-lite-pytorch`` builds the network)."""

    model_type = "skymoe_efficientnet_lite"

    variant: str = "efficientnet-lite0"
    patch_size: int = 32  # output stride: one visual token per 32x32 pixels
    # Multi-scale features: the last block at each of these output strides, finer maps folded into
    # channels (space-to-depth) on the grid of the coarsest; None = the head (or last block, see the tower).
    feature_strides: list[int] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.feature_strides:
            strides = sorted({int(s) for s in self.feature_strides})
            if any(s not in (2, 4, 8, 16, 32) for s in strides):
                raise ValueError(f"feature_strides {self.feature_strides}: each must be one of 2, 4, 8, 16, 32")
            self.feature_strides = strides
            self.patch_size = strides[-1]  # one visual token per cell of the coarsest map


AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig)
AutoConfig.register(SkyMoEConfig.model_type, SkyMoEConfig)
