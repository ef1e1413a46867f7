"""Install experts into any HF decoder by module replacement: each chosen decoder layer is wrapped
by a :class:`MoEDecoderLayer` that computes its dispatch plan, and its linears (LoRA) or MLP (FFN)
become experts.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from skymoe.model.dispatch import DispatchPlan, LayerDispatch, OneTokenPlan
from skymoe.model.experts import FFNExperts, LoRAExperts, linear_features
from skymoe.model.router import ExpertGate, RoutingContext


class MoEDecoderLayer(nn.Module):
    """Wraps one HF decoder layer: computes its dispatch plan, then runs the layer whose linears are experts.

    Attribute lookups the host model does on its layers (e.g. ``attention_type``) fall through to the
    wrapped layer, so the wrapper works for any decoder family.
    """

    def __init__(self, layer: nn.Module, gate: ExpertGate | None, context: RoutingContext, dispatch: LayerDispatch):
        super().__init__()
        self.layer = layer
        self.gate = gate
        self.context = context
        self.dispatch = dispatch

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)

    def forward(self, hidden_states, *args, **kwargs):
        if self.gate is not None:
            self.dispatch.plan = self._plan(hidden_states)
        return self.layer(hidden_states, *args, **kwargs)

    def _plan(self, hidden_states: torch.Tensor) -> DispatchPlan:
        gate = self.gate
        if self._is_cpu_decode_step(hidden_states):  # the choice as Python numbers (see ExpertGate.choose_for_one_token)
            pairs = gate.choose_for_one_token(hidden_states, self.context)
            if pairs is not None:
                return OneTokenPlan(pairs, gate.num_experts, hidden_states.dtype, hidden_states.device)
        index, weight = gate(hidden_states, self.context)
        return DispatchPlan.from_topk(index, weight, gate.num_experts)

    def _is_cpu_decode_step(self, hidden_states: torch.Tensor) -> bool:
        """One token, token routing, CPU inference without gate records, and no hooks on the gate (they would not run)."""
        batch, seq = hidden_states.shape[:2]
        gate, context = self.gate, self.context
        return (batch * seq == 1 and gate.routing == "token" and not context.record and context.routing_embedding is not None
                and not gate.training and not torch.is_grad_enabled() and hidden_states.device.type == "cpu"
                and not (gate._forward_hooks or gate._forward_pre_hooks))


# Where a decoder keeps its layers: ``layers`` in Llama/Qwen2/Gemma/Mistral, ``h`` in GPT-2.
LAYER_LIST_NAMES = ("layers", "h")


def find_decoder_layers(language_model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The ModuleList of decoder layers of ``language_model.get_decoder()`` (or of the model itself)."""
    decoder = language_model.get_decoder() if hasattr(language_model, "get_decoder") else language_model
    for name in LAYER_LIST_NAMES:
        layers = getattr(decoder, name, None)
        if isinstance(layers, nn.ModuleList):
            if len(layers) != num_layers:
                raise TypeError(f"{type(decoder).__name__}.{name} has {len(layers)} layers, the config says {num_layers}")
            return layers
    raise TypeError(
        f"no decoder layers found in {type(language_model).__name__}: expected get_decoder() (or the model) "
        f"to have a ModuleList named one of {LAYER_LIST_NAMES}"
    )


def resolve_lora_targets(layer: nn.Module, targets: list[str]) -> list[str]:
    """Dotted names (relative to the layer) of the linears to adapt; ``"mlp"`` = every linear of the FFN."""
    names = []
    for target in targets:
        if target == "mlp":
            names += [f"mlp.{n}" for n, m in layer.mlp.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
        else:
            module = layer.get_submodule(target)
            linear_features(module)
            names.append(target)
    if not names:
        raise ValueError(f"lora_targets {targets} matched no linear layer in {type(layer).__name__}")
    return names


def install_experts(language_model: nn.Module, config, context: RoutingContext) -> None:
    """Replace the chosen decoder layers by MoE layers (or dense-LoRA layers when num_experts == 0)."""
    moe = config.moe_settings
    if moe.num_experts == 0 and not moe.dense_lora:
        return
    layers = find_decoder_layers(language_model, config.text_config.num_hidden_layers)
    for index in config.moe_layer_indices:
        layer = layers[index]
        dispatch = LayerDispatch()
        gate = None
        if moe.num_experts:
            gate = ExpertGate(
                config.text_config.hidden_size,
                config.router_settings.hidden_size,
                moe.num_experts,
                moe.top_k,
                moe.routing,
                config.router_settings.jitter_noise,
            )
        if moe.num_experts and moe.expert_type == "ffn":
            layer.mlp = FFNExperts(layer.mlp, moe.num_experts, dispatch)
        else:
            for name in resolve_lora_targets(layer, moe.lora_targets):
                parent_name, _, child = name.rpartition(".")
                parent = layer.get_submodule(parent_name) if parent_name else layer
                lora = LoRAExperts(getattr(parent, child), max(moe.num_experts, 1), moe.lora_rank, moe.lora_alpha, dispatch)
                setattr(parent, child, lora)
        layers[index] = MoEDecoderLayer(layer, gate, context, dispatch)
