"""What SkyMoE's forward and generate return (transformers ``ModelOutput`` dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.utils import ModelOutput


@dataclass
class SkyMoEOutput(ModelOutput):
    """``gate_records``: each MoE layer's gate decision (:class:`~skymoe.model.router.GateRecord`), in layer order,
    when router statistics were asked for (``output_router_stats``); the aux losses and statistics come from them.

    Expert LLMs (``moe.expert_type: llm``): ``logits`` are the mixture's float32 log-probabilities, and
    ``cache``, ``hidden_states`` and ``attentions`` hold the k*B expert rows (see :mod:`skymoe.model.expert_llms`)."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: object | None = None
    loss_terms: dict | None = None  # every term of ``loss``, unweighted: "lm" and the router/CDA terms (skymoe.model.losses)
    task_logits: torch.FloatTensor | None = None
    granularity_logits: torch.FloatTensor | None = None
    routing_embedding: torch.FloatTensor | None = None
    expert_load: torch.FloatTensor | None = None
    sample_expert_weights: torch.FloatTensor | None = None
    gate_records: tuple | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    box_plan: object | None = None  # generation with a box head: the boxes carried to the next step (skymoe.model.box_head)


@dataclass
class RoutingReadout:
    """What the router decided in one pass (the prefill, in generation)."""

    task_logits: torch.Tensor  # [B, T]
    granularity_logits: torch.Tensor  # [B, G]
    sample_expert_weights: torch.Tensor | None  # [B, L, E]; None for a dense model


@dataclass
class SkyMoEGenerateOutput(GenerateDecoderOnlyOutput):
    """``generate(..., output_routing=True)``: the tokens and the router's decision at the prefill
    (None for a model without a router)."""

    routing: RoutingReadout | None = None
