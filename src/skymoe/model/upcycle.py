"""Upcycling: a dense stage-1 SkyMoE model -> an MoE model whose every expert is an exact copy.

LoRA experts (and expert LLMs) inherit the dense LoRA adapter of the same linear
(unmerged, so the copy is bit-exact); FFN experts are copies of the dense FFN
with any dense adapter folded in. Expert LLMs' per-expert routing instructions
start as the dense model's one. Adapters on layers that do not become MoE layers are folded
into their base weights. Everything else is copied by name. Separate expert LMs (``moe.expert_models``) are
not copies: each is read from its folder (:mod:`skymoe.model.expert_models`), and the dense adapters fold.
"""
from __future__ import annotations

import copy
from dataclasses import asdict

import torch

from skymoe.model.configuration import resolve_settings
from skymoe.model.expert_models import load_expert_weights, read_expert_configs
from skymoe.model.experts import FFNExperts, LoRAExperts
from skymoe.model.install import MoEDecoderLayer


def _plain_names(model) -> dict[str, str]:
    """Map wrapper module paths to the plain HF path: drop MoEDecoderLayer '.layer' and LoRAExperts '.base'."""
    renames = {}
    for name, module in model.named_modules():
        if isinstance(module, MoEDecoderLayer):
            renames[f"{name}.layer"] = name
        elif isinstance(module, LoRAExperts):
            renames[f"{name}.base"] = name
    return renames


def _to_plain(name: str, renames: dict[str, str]) -> str:
    # Longest wrapper paths first: a LoRA path contains its layer path.
    for wrapped in sorted(renames, key=len, reverse=True):
        if name == wrapped or name.startswith(wrapped + "."):
            name = renames[wrapped] + name[len(wrapped) :]
    return name


def _unwrap_dense(dense_copy, keep_unmerged: set[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fold or detach the dense adapters of ``dense_copy`` in place; returns adapters kept for LoRA experts."""
    renames = _plain_names(dense_copy)
    kept = {}
    for name, module in list(dense_copy.named_modules()):
        if not isinstance(module, LoRAExperts):
            continue
        plain = _to_plain(name, renames)
        if plain in keep_unmerged:
            kept[plain] = (module.lora_A.detach().clone(), module.lora_B.detach().clone())
            base = module.base
        else:
            base = module.merged_base()
        parent_name, _, child = name.rpartition(".")
        setattr(dense_copy.get_submodule(parent_name), child, base)
    for name, module in list(dense_copy.named_modules()):
        if isinstance(module, MoEDecoderLayer):
            parent_name, _, child = name.rpartition(".")
            parent = dense_copy.get_submodule(parent_name)
            parent[int(child)] = module.layer
    return kept


@torch.no_grad()
def upcycle(model_class, dense_model, num_experts: int, perturb: float = 0.0, seed: int = 0, tokenizer=None, **moe_kwargs):
    """Build an MoE model from ``dense_model`` (num_experts == 0). ``perturb`` adds N(0, perturb) to expert copies.
    ``tokenizer`` (the stage-1 one) is what ``moe.expert_models``' tokenizers are checked against."""
    if dense_model.config.moe["num_experts"] != 0:
        raise ValueError(f"upcycle expects a dense model (moe.num_experts=0), got {dense_model.config.moe['num_experts']}")
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    config = copy.deepcopy(dense_model.config)
    config.moe = asdict(resolve_settings("moe", {**config.moe, **moe_kwargs, "num_experts": num_experts}))
    config.check_box_head()  # the stage-1 box head reads one LLM pass: not with expert LLMs
    folders = config.moe["expert_models"]
    if folders:
        if tokenizer is None:
            raise ValueError("moe.expert_models: upcycling needs the stage-1 tokenizer to check the expert LMs' tokenizers")
        config.expert_text_configs = read_expert_configs(folders, config.text_config, tokenizer)
    moe_model = model_class(config).to(dense_model.dtype)

    moe_renames = _plain_names(moe_model)
    lora_targets = {_to_plain(n, moe_renames) for n, m in moe_model.named_modules() if isinstance(m, LoRAExperts)}
    dense_copy = copy.deepcopy(dense_model)
    kept_adapters = _unwrap_dense(dense_copy, lora_targets)
    plain_state = dense_copy.state_dict()

    moe_state = moe_model.state_dict()
    for name, tensor in moe_state.items():
        source = plain_state.get(_to_plain(name, moe_renames))
        if source is not None and source.shape == tensor.shape:
            tensor.copy_(source)
        elif name == "router.prompt_base" and source is not None:  # expert LLMs: the dense prompt, once per expert
            tensor.copy_(source.expand_as(tensor))
    generator = torch.Generator().manual_seed(seed)
    for name, module in moe_model.named_modules():
        plain = _to_plain(name, moe_renames)
        if isinstance(module, LoRAExperts) and plain in kept_adapters:
            lora_a, lora_b = kept_adapters[plain]
            module.lora_A.copy_(lora_a.expand_as(module.lora_A))
            module.lora_B.copy_(lora_b.expand_as(module.lora_B))
        elif isinstance(module, FFNExperts):
            copies = FFNExperts(dense_copy.get_submodule(plain), num_experts)
            module.load_state_dict(copies.state_dict())
        else:
            continue
        if perturb:
            for param in module.parameters(recurse=False):
                # the generator's device, not the default one: callers build models under `with torch.device("cuda")`
                param.add_(torch.randn(param.shape, generator=generator, device=generator.device).to(param) * perturb)
    if folders:
        load_expert_weights(moe_model, folders)
    moe_model.train(dense_model.training)
    return moe_model
