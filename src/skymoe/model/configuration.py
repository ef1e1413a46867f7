"""SkyMoEConfig: one config for the dense stage-1 model and the MoE stage-2 model.

``vision_config`` and ``text_config`` are ordinary transformers configs (any
vision model / causal LM, or our EfficientNet-Lite config); ``projector``,
``router`` and ``moe`` are small JSON dicts whose keys and defaults are the
dataclasses below (unknown keys are an error naming the allowed ones).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec


@dataclass
class ProjectorSettings:
    type: str = "mlp2x_gelu"  # "mlp2x_gelu" | "resampler"
    num_queries: int = 32  # resampler: learned queries = visual tokens given to the LLM
    num_layers: int = 2  # resampler blocks
    num_heads: int = 4
    instruction_aware: bool = False  # resampler queries also attend to the instruction (InstructBLIP)
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
    expert_type: str = "lora"  # "lora" | "ffn"
    routing: str = "token"  # "token" | "sequence"
    moe_layers: list[int] | None = None  # decoder layer indices; None = every layer
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["mlp"])  # "mlp" = every linear of the FFN
    dense_lora: bool = True  # dense model (num_experts=0): one LoRA adapter on the same linears


SETTINGS = {"projector": ProjectorSettings, "router": RouterSettings, "moe": MoESettings}
CHOICES = {
    ("projector", "type"): ("mlp2x_gelu", "resampler"),
    ("moe", "expert_type"): ("lora", "ffn"),
    ("moe", "routing"): ("token", "sequence"),
}


def resolve_settings(name: str, value: dict | None):
    """Fill defaults and validate one settings dict; returns the dataclass instance."""
    cls = SETTINGS[name]
    value = dict(value or {})
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"unknown {name} setting(s) {unknown}; allowed: {sorted(allowed)}")
    settings = cls(**value)
    for (section, key), options in CHOICES.items():
        if section == name and getattr(settings, key) not in options:
            raise ValueError(f"{name}.{key} = {getattr(settings, key)!r}; expected one of {list(options)}")
    if name == "projector" and settings.position_code and settings.type != "mlp2x_gelu":
        raise ValueError(f"projector.position_code needs type mlp2x_gelu (one token per grid cell), got {settings.type!r}")
    return settings


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
    vision_feature_layer: int = -1
    freeze_vision: bool = True
    image_size: int = 224
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    num_image_tokens: int = 49
    num_route_tokens: int = 4
    image_token_id: int = 4
    route_token_id: int = 5
    load_balance_weight: float = 0.01
    router_z_weight: float = 0.001
    router_ce_weight: float = 0.1
    # Box location tokens (skymoe.data.boxes.LOC_TOKENS, consecutive ids from location_token_start): a target
    # location token is learnt as a Gaussian of this width (in steps of the 0-100 scale) over its axis' tokens,
    # so a near miss is a small error rather than as wrong as any other token; 0 = plain cross-entropy.
    location_token_start: int | None = None
    location_sigma: float = 0.0
    # Where build_model() takes pretrained weights from (local dirs / asset names); from_pretrained ignores them.
    vision_pretrained: str | None = None
    text_pretrained: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in SETTINGS:
            setattr(self, name, asdict(resolve_settings(name, getattr(self, name))))
        self.image_mean = list(self.image_mean or (0.485, 0.456, 0.406))
        self.image_std = list(self.image_std or (0.229, 0.224, 0.225))
        if self.moe["num_experts"] and not 1 <= self.moe["top_k"] <= self.moe["num_experts"]:
            raise ValueError(f"moe.top_k={self.moe['top_k']} must be in 1..num_experts={self.moe['num_experts']}")

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
