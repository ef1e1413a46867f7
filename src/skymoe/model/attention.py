"""The language models' attention: transformers' SDPA, with its inputs in float32 under CPU autocast.

Under ``torch.autocast("cpu", bfloat16)`` (``precision: bf16``) the linear layers multiply in bfloat16, which
a CPU with AMX does several times faster than float32; PyTorch's CPU flash-attention kernel, though, runs its
backward far slower in bfloat16 than in float32 (``benchmarks/llm_step_variants.py`` times both). So on a CPU
under autocast the attention reads its query, key and value in float32: the step keeps the fast products and
the fast attention.
Everywhere else (no autocast, or a GPU) this is transformers' ``sdpa`` unchanged.

Registered with transformers' ``AttentionInterface`` (and its mask with ``AttentionMaskInterface``) as
``skymoe_sdpa``; a language model built by SkyMoE (:func:`causal_lm_from_config`) uses it unless its config asks
for another implementation.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface, AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "skymoe_sdpa"


def sdpa_float32_under_cpu_autocast(module, query, key, value, attention_mask, **kwargs):
    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():  # an additive mask joins the float32 scores
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


AttentionInterface.register(NAME, sdpa_float32_under_cpu_autocast)
AttentionMaskInterface.register(NAME, sdpa_mask)


def causal_lm_from_config(text_config):
    """``AutoModelForCausalLM.from_config`` with ``skymoe_sdpa`` when the config asks for SDPA or for nothing; any
    other request stands, and a model type without SDPA gets what transformers would pick for it."""
    requested = getattr(text_config, "_attn_implementation", None)
    if requested not in (None, "sdpa", NAME):
        return AutoModelForCausalLM.from_config(text_config)
    try:
        return AutoModelForCausalLM.from_config(text_config, attn_implementation=NAME)
    except ValueError:  # transformers refuses SDPA (and so ours) for a model type that does not support it
        if requested is not None:
            raise
        return AutoModelForCausalLM.from_config(text_config)
