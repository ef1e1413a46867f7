"""Install experts into any HF decoder by module replacement: each chosen decoder layer is wrapped
by a :class:`MoEDecoderLayer` that computes its dispatch plan, and its linears (LoRA) or MLP (FFN)
become experts.

The routing inputs reach the MoE layers as forward arguments: the top model passes ``routing_embedding``,
``routing_mask`` and ``gate_records`` (expert LLMs: ``row_expert``) to the LLM's forward, whose keyword
arguments HF decoders hand to every decoder layer; each :class:`MoEDecoderLayer` takes them out before
calling the layer it wraps.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from skymoe.model.dispatch import DispatchPlan, OneTokenPlan, dispatching
from skymoe.model.experts import FFNExperts, LoRAExperts, linear_features
from skymoe.model.router import ExpertGate, GateRecord


class MoEDecoderLayer(nn.Module):
    """Wraps one HF decoder layer: computes its dispatch plan, then runs the layer whose linears are experts.

    Attribute lookups the host model does on its layers (e.g. ``attention_type``) fall through to the
    wrapped layer, so the wrapper works for any decoder family.
    """

    def __init__(self, layer: nn.Module, gate: ExpertGate | None, row_experts: int = 0):
        """``row_experts``: E for expert LLMs (no gate): every token of a row goes to its row's expert."""
        super().__init__()
        self.layer = layer
        self.gate = gate
        self.row_experts = row_experts
        self._compiled_pass = None  # see compile_pass

    def compile_pass(self) -> None:
        """``torch.compile`` this layer's pass whole, dynamic in the sequence length: the gate, the dispatch plan and
        the wrapped layer in one graph (for experts whose shapes do not depend on the routing; see
        :func:`skymoe.model.build.compile_decoder_layers`)."""
        self._compiled_pass = torch.compile(self._pass, dynamic=True)

    def __getstate__(self):
        # deepcopy/pickle: a compiled pass is bound to this instance; a copy runs eager until compiled itself
        return {**super().__getstate__(), "_compiled_pass": None}

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("layer"), name)

    def forward(self, hidden_states, *args, routing_embedding: torch.Tensor | None = None, routing_mask: torch.Tensor | None = None,
                gate_records: list[GateRecord] | None = None, row_expert: torch.Tensor | None = None, **kwargs):
        """``routing_embedding`` [B, H] conditions the gate, ``routing_mask`` [B, S] marks the real tokens in
        the gate's record, ``gate_records`` (None: keep none) collects this pass's gate decisions.
        ``row_expert`` [rows]: the expert of each row, for expert LLMs (the router chose them)."""
        if self._compiled_pass is None:
            return self._pass(hidden_states, routing_embedding, routing_mask, gate_records, row_expert, *args, **kwargs)
        # The compiled pass records into a list of its own: dynamo guards a list argument's length, and the forward's
        # shared list grows by one at every MoE layer (a recompile per layer, and eager past dynamo's recompile limit).
        records = None if gate_records is None else []
        output = self._compiled_pass(hidden_states, routing_embedding, routing_mask, records, row_expert, *args, **kwargs)
        if records:
            gate_records.extend(records)
        return output

    def _pass(self, hidden_states, routing_embedding, routing_mask, gate_records, row_expert, *args, **kwargs):
        plan = None
        if self.row_experts:
            plan = self._row_plan(hidden_states, row_expert)
        elif self.gate is not None:
            plan = self._plan(hidden_states, routing_embedding, routing_mask, gate_records)
        with dispatching(plan):
            return self.layer(hidden_states, *args, **kwargs)

    def _plan(self, hidden_states: torch.Tensor, routing_embedding, routing_mask, gate_records) -> DispatchPlan:
        gate = self.gate
        if gate_records is None and self._is_cpu_decode_step(hidden_states, routing_embedding):
            pairs = gate.choose_for_one_token(hidden_states, routing_embedding)  # Python numbers (see choose_for_one_token)
            if pairs is not None:
                return OneTokenPlan(pairs, gate.num_experts, hidden_states.dtype, hidden_states.device)
        index, weight = gate(hidden_states, routing_embedding, gate_records, routing_mask)
        return DispatchPlan.from_topk(index, weight, gate.num_experts)

    def _row_plan(self, hidden_states: torch.Tensor, row_expert: torch.Tensor | None) -> DispatchPlan:
        """Top-1 plan, weight 1: each token to its row's expert (a one-token plan takes the chosen-expert forms)."""
        if row_expert is None:
            raise RuntimeError("expert-LLM layer called without row_expert: run the full SkyMoE model, not its LLM")
        batch, seq = hidden_states.shape[:2]
        if row_expert.shape != (batch,):
            raise RuntimeError(f"row_expert has shape {tuple(row_expert.shape)}, expected one expert per row ({batch},)")
        index = row_expert.repeat_interleave(seq).unsqueeze(1)
        return DispatchPlan.from_topk(index, hidden_states.new_ones(index.shape), self.row_experts)

    def _is_cpu_decode_step(self, hidden_states: torch.Tensor, routing_embedding) -> bool:
        """One token, token routing, CPU inference, and no hooks on the gate (they would not run)."""
        batch, seq = hidden_states.shape[:2]
        gate = self.gate
        return (batch * seq == 1 and gate.routing == "token" and routing_embedding is not None
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


def install_experts(language_model: nn.Module, config) -> None:
    """Replace the chosen decoder layers by MoE layers (or dense-LoRA layers when num_experts == 0)."""
    moe = config.moe_settings
    if moe.num_experts == 0 and not moe.dense_lora:
        return
    layers = find_decoder_layers(language_model, config.text_config.num_hidden_layers)
    for index in config.moe_layer_indices:
        layer = layers[index]
        gate = None
        if moe.num_experts and moe.expert_type != "llm":  # expert LLMs: one choice by the router, no per-layer gate
            gate = ExpertGate(
                config.text_config.hidden_size,
                config.router_settings.hidden_size,
                moe.num_experts,
                moe.top_k,
                moe.routing,
                config.router_settings.jitter_noise,
            )
        if moe.num_experts and moe.expert_type == "ffn":
            layer.mlp = FFNExperts(layer.mlp, moe.num_experts)
        else:
            for name in resolve_lora_targets(layer, moe.lora_targets):
                parent_name, _, child = name.rpartition(".")
                parent = layer.get_submodule(parent_name) if parent_name else layer
                lora = LoRAExperts(getattr(parent, child), max(moe.num_experts, 1), moe.lora_rank, moe.lora_alpha)
                setattr(parent, child, lora)
        layers[index] = MoEDecoderLayer(layer, gate, moe.num_experts if moe.expert_type == "llm" else 0)
