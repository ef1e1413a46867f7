"""Helpers that make configs and models: tiny ones for tests and the demo, or from local checkpoints."""
from __future__ import annotations

from dataclasses import asdict

from transformers import AutoConfig

from skymoe.data.tokenizer import location_token_start
from skymoe.model.configuration import EfficientNetLiteConfig, ModelSettings, SkyMoEConfig, resolve_settings
from skymoe.model.geoembed import GEOEMBED_ASSET, GeoEmbedConfig
from skymoe.model.location import init_location_embeddings
from skymoe.model.projector import count_visual_tokens
from skymoe.model.vision import count_patch_tokens

# Normalisation each tower family was trained with.
IMAGE_STATS = {
    "clip_vision_model": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "dinov2": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    EfficientNetLiteConfig.model_type: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    GeoEmbedConfig.model_type: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

TINY_TEXT = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "gemma3_text": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16
    ),
    "gpt2": dict(n_embd=64, n_inner=128, n_layer=2, n_head=4, n_positions=512),
}
TINY_VISION = {
    "vit": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8),
    "clip_vision_model": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8),
    "siglip_vision_model": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=8),
    "dinov2": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=8),
    EfficientNetLiteConfig.model_type: dict(),
}


def vision_config_for(model_type: str, image_size: int, **kwargs):
    """A vision sub-config by model type, native size = ``image_size``."""
    if model_type == EfficientNetLiteConfig.model_type:
        return EfficientNetLiteConfig(**kwargs)
    return AutoConfig.for_model(model_type, image_size=image_size, **kwargs)


def vision_config_from(vision_dir: str):
    """The vision config of a local checkpoint: a vision model's own, or a dual encoder's (CLIP/SigLIP) vision part."""
    config = AutoConfig.from_pretrained(vision_dir)
    return getattr(config, "vision_config", config)


def make_config(
    vision_config,
    text_config,
    *,
    image_size: int,
    vocab_size: int | None = None,
    special_ids: dict[str, int] | None = None,
    **kwargs,
) -> SkyMoEConfig:
    """Assemble a SkyMoEConfig; derives num_image_tokens and image statistics from the tower and projector."""
    projector = resolve_settings("projector", kwargs.pop("projector", None))
    num_patches = count_patch_tokens(vision_config, image_size)
    mean, std = IMAGE_STATS.get(vision_config.model_type, IMAGE_STATS["dinov2"])
    if vocab_size is not None:
        text_config.vocab_size = vocab_size
    ids = {}
    if special_ids is not None:
        ids = {"image_token_id": special_ids["image"], "route_token_id": special_ids["route"]}
        for role in ("pad", "bos", "eos"):
            setattr(text_config, f"{role}_token_id", special_ids[role])
    kwargs.setdefault("image_mean", list(mean))
    kwargs.setdefault("image_std", list(std))
    return SkyMoEConfig(
        vision_config=vision_config,
        text_config=text_config,
        projector=asdict(projector),
        image_size=image_size,
        num_image_tokens=count_visual_tokens(projector, num_patches),
        **ids,
        **kwargs,
    )


def pretrained_config(vision_dir: str, text_dir: str, image_size: int | None = None, **overrides) -> SkyMoEConfig:
    """Config for a vision model and a causal LM in local directories; ``build_model`` then loads their weights.

    ``vision_dir`` may hold a vision model or a dual encoder (CLIP/SigLIP: its vision part is used).
    ``image_size`` larger than the tower's native size interpolates its position embeddings.
    """
    vision_config = vision_config_from(vision_dir)
    text_config = AutoConfig.from_pretrained(text_dir)
    return make_config(
        vision_config,
        text_config,
        image_size=image_size or vision_config.image_size,
        vision_pretrained=str(vision_dir),
        text_pretrained=str(text_dir),
        **overrides,
    )


def tiny_config(
    text_model_type: str = "llama",
    vision_model_type: str = "vit",
    image_size: int = 32,
    vocab_size: int = 128,
    special_ids: dict[str, int] | None = None,
    **overrides,
) -> SkyMoEConfig:
    """A few-hundred-thousand-parameter config for tests: 2-layer LLM, 1-layer vision tower.

    ``overrides`` are SkyMoEConfig fields (``moe={...}``, ``projector={...}``, ``num_route_tokens``...).
    Without ``special_ids`` the SkyMoE token ids are 0..5 as :func:`skymoe.data.tokenizer.build_tokenizer` makes them.
    """
    if text_model_type not in TINY_TEXT or vision_model_type not in TINY_VISION:
        raise ValueError(f"tiny_config knows text {sorted(TINY_TEXT)} and vision {sorted(TINY_VISION)}")
    special_ids = special_ids or {"pad": 0, "bos": 1, "eos": 2, "unk": 3, "image": 4, "route": 5}
    text_config = AutoConfig.for_model(text_model_type, **TINY_TEXT[text_model_type])
    vision_config = vision_config_for(vision_model_type, image_size, **TINY_VISION[vision_model_type])
    overrides.setdefault("router", {"hidden_size": 32})
    overrides.setdefault("num_route_tokens", 2)
    return make_config(vision_config, text_config, image_size=image_size, vocab_size=vocab_size, special_ids=special_ids, **overrides)


def dense_config(settings: ModelSettings, tokenizer) -> SkyMoEConfig:
    """The dense stage-1 SkyMoEConfig that a YAML ``model:`` section describes (towers built or read from disk)."""
    from skymoe.data.tokenizer import special_token_ids
    from skymoe.model.gguf import pretrained_llm_folder
    from skymoe.model.vision import EFFICIENTNET_ASSET

    v, t = settings.vision, settings.llm
    if v.pretrained is None:
        vision = vision_config_for(
            v.type, settings.image_size, hidden_size=v.hidden_size, intermediate_size=2 * v.hidden_size,
            num_hidden_layers=v.num_layers, num_attention_heads=v.num_heads, patch_size=v.patch_size,
        )
    elif v.pretrained == EFFICIENTNET_ASSET:
        vision = EfficientNetLiteConfig(feature_strides=v.feature_strides)
    elif v.pretrained == GEOEMBED_ASSET:
        vision = GeoEmbedConfig()
    else:
        vision = vision_config_from(v.pretrained)
    text_dir = str(pretrained_llm_folder(t.pretrained)) if t.pretrained else None
    if text_dir is None:
        text = AutoConfig.for_model(
            t.type, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
            num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads,
        )
    else:
        text = AutoConfig.from_pretrained(text_dir)
    return make_config(
        vision, text, image_size=settings.image_size, vocab_size=len(tokenizer), special_ids=special_token_ids(tokenizer),
        vision_pretrained=v.pretrained, text_pretrained=text_dir, **settings.config_kwargs(),
    )


def build_model(config: SkyMoEConfig, tokenizer=None):
    """Instantiate a model from ``config``, loading ``vision_pretrained``/``text_pretrained`` weights.

    ``vision_pretrained``: a local HF model directory, or ``"efficientnet-lite0"`` (ImageNet weights from
    the assets registry). ``text_pretrained``: a local causal-LM directory. With ``tokenizer`` the LLM
    embeddings are resized to it and the special token ids are taken from it.
    """
    from skymoe.model.modeling import SkyMoEForConditionalGeneration
    from skymoe.model.vision import EFFICIENTNET_ASSET, efficientnet_weights_path

    if tokenizer is not None:
        from skymoe.data.tokenizer import special_token_ids

        ids = special_token_ids(tokenizer)
        config.image_token_id, config.route_token_id = ids["image"], ids["route"]
        config.location_token_start = location_token_start(tokenizer)
        for role in ("pad", "bos", "eos"):
            setattr(config.text_config, f"{role}_token_id", ids[role])
    model = SkyMoEForConditionalGeneration(config)
    if config.vision_pretrained:
        source = efficientnet_weights_path() if config.vision_pretrained == EFFICIENTNET_ASSET else config.vision_pretrained
        model.vision_tower.load_pretrained(source)
    if config.text_pretrained:
        if config.moe["num_experts"] and config.moe["expert_type"] == "ffn":
            raise ValueError("FFN experts are copies of a dense FFN: build the dense model, then upcycle it")
        load_language_model(model.language_model, config.text_pretrained)
    if tokenizer is not None:
        if len(tokenizer) != model.get_input_embeddings().weight.shape[0]:
            model.language_model.resize_token_embeddings(len(tokenizer))
        if model.config.text_config.hidden_size % 4 == 0:  # the coordinate code's layout (skymoe.model.location)
            init_location_embeddings(model.language_model, tokenizer)
    return model


def _grown_vocabulary(source, tensor, vocab: int) -> bool:
    """An embedding / output-head matrix whose only difference is extra token rows (our special tokens)."""
    return source.dim() >= 1 and source.shape[0] == vocab < tensor.shape[0] and source.shape[1:] == tensor.shape[1:]


def load_language_model(language_model, directory: str) -> int:
    """Copy a pretrained causal LM's weights into the (possibly MoE-wrapped) ``language_model``; returns the
    checkpoint's vocabulary size (rows past it, SkyMoE's added tokens, keep their values)."""
    from transformers import AutoModelForCausalLM

    from skymoe.model.upcycle import _plain_names, _to_plain

    pretrained_model = AutoModelForCausalLM.from_pretrained(directory)
    vocab = pretrained_model.config.get_text_config().vocab_size
    pretrained = pretrained_model.state_dict()
    renames = _plain_names(language_model)
    loaded = 0
    for name, tensor in language_model.state_dict().items():
        source = pretrained.get(_to_plain(name, renames))
        if source is None:
            continue
        if _grown_vocabulary(source, tensor, vocab):
            tensor[:vocab].copy_(source)  # rows of the added <image>/<route> tokens keep their fresh init
        elif source.shape != tensor.shape:
            raise ValueError(f"{directory}: {name} has shape {tuple(source.shape)}, the config expects {tuple(tensor.shape)}")
        else:
            tensor.copy_(source)
        loaded += 1
    if not loaded:
        raise ValueError(f"{directory}: no weights matched the language model of this config")
    return vocab


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant, the mode that works with DDP/FSDP).

    The MoE layers' routing plan is made outside the checkpointed layer (see ``DispatchPlan._keep``).
    transformers 5 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def compile_decoder_layers(model) -> int:
    """``torch.compile`` each decoder layer of the LLM in place (regional compilation: the dense layers share one
    compiled graph, and the MoE layers another, dynamic in the sequence length); returns how many were compiled.

    A layer that holds experts (:class:`~skymoe.model.install.MoEDecoderLayer`) is compiled whole, its gate and
    dispatch plan inside the graph, when its experts are LoRA experts in the rank-space form (:attr:`LoRAExperts.rank_space`),
    whose shapes do not depend on the routing. The grouped forms sort rows by expert and read each expert's row count
    back to Python, a graph break per linear and a recompile per new count, so those layers (and FFN experts) run
    eager. The parameters and ``state_dict`` keys stay as they were, so checkpoints and ``save_pretrained`` do not change.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    from skymoe.model.install import MoEDecoderLayer

    # the LLM(s) that run: not the tower (frozen, its features cached), whose layers may be of the same kind
    llm = model.expert_lms if getattr(model, "expert_lms", None) is not None else model.language_model
    moe_layers = [m for m in llm.modules() if isinstance(m, MoEDecoderLayer)]
    inside_experts = {id(m) for wrapper in moe_layers for m in wrapper.modules()}
    dense = [m for m in llm.modules() if isinstance(m, GradientCheckpointingLayer) and id(m) not in inside_experts]
    whole = [wrapper for wrapper in moe_layers if _routing_independent_shapes(wrapper)]
    for layer in dense:
        layer.compile(dynamic=True)
    for wrapper in whole:
        wrapper.compile_pass()
    return len(dense) + len(whole)


def _routing_independent_shapes(layer) -> bool:
    from skymoe.model.experts import FFNExperts, LoRAExperts

    experts = [m for m in layer.modules() if isinstance(m, (LoRAExperts, FFNExperts))]
    return all(isinstance(m, LoRAExperts) and m.rank_space for m in experts)
