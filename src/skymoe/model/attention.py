"""The language models' attention: transformers' SDPA, with its inputs in float32 under CPU autocast.

Under ``torch.autocast("cpu", bfloat16)`` (``precision: bf16``) the linear layers multiply in bfloat16, which
a CPU with AMX does ~6x faster than float32; PyTorch's CPU flash-attention kernel, though, runs its backward
~5x slower in bfloat16 than in float32 (``benchmarks/llm_step_variants.py``). So on a CPU under autocast the
attention reads its query, key and value in float32: the step keeps the fast products and the fast attention.
Everywhere else (no autocast, or a GPU) this is transformers' ``sdpa`` unchanged.

Registered with transformers' ``AttentionInterface`` (and its mask with ``AttentionMaskInterface``) as
``skymoe_sdpa``; a language model built by SkyMoE uses it unless its config asks for another implementation.
"""
from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "skymoe_sdpa"


def sdpa_float32_under_cpu_autocast(module, query, key, value, attention_mask, **kwargs):
    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


AttentionInterface.register(NAME, sdpa_float32_under_cpu_autocast)
AttentionMaskInterface.register(NAME, sdpa_mask)


def attention_implementation(text_config) -> str:
    """``skymoe_sdpa`` for a config that asks for SDPA or for nothing; any other request stands."""
    requested = getattr(text_config, "_attn_implementation", None)
    return NAME if requested in (None, "sdpa", NAME) else requested
