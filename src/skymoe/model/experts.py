"""LoRA and FFN experts with grouped (sorted) dispatch, installed into any HF decoder by module replacement.

Why hand-written: peft cannot express token-routed LoRA experts (a different
adapter mix per token chosen by a gate), and transformers' MoE blocks are tied
to their model families. The same :class:`LoRAExperts` with one expert and no
gate is the dense stage-1 adapter, which makes upcycling an exact copy.

Dispatch: the k assignments of every token are sorted by expert, so each
expert sees one contiguous slice; the work is two grouped matmuls over
``tokens*k`` rows, whatever the number of experts.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.pytorch_utils import Conv1D

from skymoe.model.router import ExpertGate, RoutingContext


class DispatchPlan:
    """Top-k assignments of N tokens, with views sorted by expert (row i of every sorted tensor is one assignment).

    The sorted views are built on first use: the decode-step LoRA forms need only ``rank_weights``
    (rank-space), ``chosen_weights`` (one token, gathered) or ``chosen_pairs`` (one token, CPU inference),
    so a decode step skips the sort, bincount and cumsum.
    """

    def __init__(self, index: torch.Tensor, weight: torch.Tensor, num_experts: int):
        self.topk_index, self.topk_weight = index, weight
        self._setup(num_experts, *index.shape)

    def _setup(self, num_experts: int, num_tokens: int, top_k: int) -> None:
        self.num_experts, self.num_tokens, self.top_k = num_experts, num_tokens, top_k
        self._gathered: tuple | None = None  # (input, its sorted rows)
        self._kept: dict[tuple[str, int], torch.Tensor] = {}  # see _keep

    def _keep(self, key: tuple[str, int], build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()``, kept for the layer's other linears unless it carries autograd history.

        The plan is made outside a checkpointed decoder layer; the layer's recompute must redo every
        op that saves tensors for backward, so gate-weight tensors are rebuilt on each use under autograd.
        """
        value = self._kept.get(key)
        if value is None:
            value = build()
            if not value.requires_grad:
                self._kept[key] = value
        return value

    @classmethod
    def from_topk(cls, index: torch.Tensor, weight: torch.Tensor, num_experts: int) -> "DispatchPlan":
        return cls(index, weight, num_experts)

    @cached_property
    def order(self) -> torch.Tensor:
        """[N*k] position in the flat (token, slot) assignments of each sorted assignment."""
        return torch.argsort(self.topk_index.reshape(-1), stable=True)

    @cached_property
    def token_index(self) -> torch.Tensor:
        """[N*k] source token of each sorted assignment."""
        return self.order // self.top_k

    @cached_property
    def expert_index(self) -> torch.Tensor:
        """[N*k] expert of each sorted assignment (non-decreasing)."""
        return self.topk_index.reshape(-1)[self.order]

    @property
    def weight(self) -> torch.Tensor:
        """[N*k, 1] gate weight of each sorted assignment."""
        return self._keep(("sorted", 1), lambda: self.topk_weight.reshape(-1, 1)[self.order])

    @cached_property
    def offsets(self) -> torch.Tensor:
        """[E] int32 end offset of each expert's slice."""
        return torch.cumsum(torch.bincount(self.topk_index.reshape(-1), minlength=self.num_experts), 0).to(torch.int32)

    def chosen_weights(self, rank: int) -> torch.Tensor:
        """[1, k*r] a single token's gate weights, repeated over each chosen expert's rank columns (shared by a layer's linears)."""
        return self._keep(("chosen", rank), lambda: self.topk_weight[0].repeat_interleave(rank).unsqueeze(0))

    def rank_weights(self, rank: int) -> torch.Tensor:
        """[N, E*r] every expert's gate weight (0 where not chosen), repeated over its rank columns (shared by a layer's linears)."""
        return self._keep(("all", rank), lambda: self.dense_weight.repeat_interleave(rank, dim=1))

    @cached_property
    def chosen_pairs(self) -> list[tuple[int, float]]:
        """A single token's (expert, gate weight) pairs as Python numbers (shared by a layer's linears)."""
        return list(zip(self.topk_index[0].tolist(), self.topk_weight[0].tolist()))

    @property
    def dense_weight(self) -> torch.Tensor:
        """[N, E] gate weight of every expert per token (0 where not chosen)."""
        def build():
            zeros = self.topk_weight.new_zeros(self.num_tokens, self.num_experts)
            return zeros.scatter(1, self.topk_index, self.topk_weight)

        return self._keep(("dense", 1), build)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` in sorted-assignment order; reused when linears share an input (gate_proj/up_proj)."""
        if self._gathered is not None and self._gathered[0] is x:
            return self._gathered[1]
        # index_select, not x[index]: its backward is an index_add_, several times faster than
        # the accumulating index_put_ that advanced indexing uses.
        rows = x.reshape(self.num_tokens, -1).index_select(0, self.token_index)
        self._gathered = (x, rows)
        return rows

    def combine(self, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Weighted sum of the expert outputs back onto their tokens -> ``shape``."""
        # under bf16 autocast the expert matmuls give bf16 rows and the gate weights stay fp32: sum in the product's dtype
        weighted = rows * self.weight
        out = weighted.new_zeros(self.num_tokens, rows.shape[-1]).index_add_(0, self.token_index, weighted)
        return out.reshape(*shape[:-1], rows.shape[-1])

    def accumulate(self, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``out`` (a fresh layer output) plus the already-weighted rows of each token, added in place."""
        out.view(self.num_tokens, -1).index_add_(0, self.token_index, rows)
        return out


class OneTokenPlan(DispatchPlan):
    """The plan of a single token chosen in Python numbers (:meth:`ExpertGate.choose_for_one_token`).

    The CPU decode form reads ``chosen_pairs`` only; the tensors other forms need are built on first use.
    """

    def __init__(self, pairs: list[tuple[int, float]], num_experts: int, dtype: torch.dtype, device: torch.device):
        self.chosen_pairs, self._dtype, self._device = pairs, dtype, device
        self._setup(num_experts, 1, len(pairs))

    @cached_property
    def topk_index(self) -> torch.Tensor:
        return torch.tensor([[e for e, _ in self.chosen_pairs]], device=self._device)

    @cached_property
    def topk_weight(self) -> torch.Tensor:
        return torch.tensor([[w for _, w in self.chosen_pairs]], dtype=self._dtype, device=self._device)


def grouped_matmul(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows ``offsets[e-1]:offsets[e]`` of ``x`` times ``weight[e]``: [N, I] x [E, I, O] -> [N, O]."""
    aligned = all(t.shape[-1] * t.element_size() % 16 == 0 for t in (x, weight))  # the kernel's stride rule
    kernel = getattr(F, "grouped_mm", None)  # absent from older torch
    if kernel is not None and aligned and (x.device.type != "cpu" or min(weight.shape[1:]) >= 128):
        if torch.is_autocast_enabled(x.device.type):  # autocast does not cover grouped_mm; do what it does for `@`
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight = x.to(dtype), weight.to(dtype)
        return kernel(x, weight, offs=offsets)
    # torch's CPU grouped_mm kernel is slow for narrow (LoRA-rank) matrices; there one GEMM per expert
    # slice is faster. split/unbind (not x[s:e] / weight[e]) so that backward assembles each gradient
    # once instead of E full-size zero tensors.
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1)).tolist()
    return torch.cat([part @ w for part, w in zip(x.split(counts), weight.unbind(0))])


# LoRA experts use the rank-space form while E * r * RANK_SPACE_RATIO <= min(in, out) (see LoRAExperts.rank_space);
# and so does a forward with at most FEW_TOKENS tokens (a decode step), whatever the width, except a single
# token with 2k <= E (batch-1 decode), which reads only its chosen experts.
RANK_SPACE_RATIO = 4
FEW_TOKENS = 64


class LayerDispatch:
    """Holder for the current plan of one decoder layer, shared by its expert modules (not a Module)."""

    plan: DispatchPlan | None = None


def linear_features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):  # GPT-2 style: weight [in, out]
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"LoRA experts need nn.Linear or Conv1D, got {type(module).__name__}")


class LoRAExperts(nn.Module):
    """``base(x) + sum_e w_e * (x A_e B_e) * alpha/r`` with the frozen base linear; E=1 without a gate = dense LoRA."""

    def __init__(self, base: nn.Module, num_experts: int, rank: int, alpha: float, dispatch: LayerDispatch):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        in_features, out_features = linear_features(base)
        self.num_experts, self.rank, self.scale = num_experts, rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(num_experts, in_features, rank))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, rank, out_features))
        self.dispatch = dispatch
        self._columns_cache: tuple | None = None  # see _lora_A_columns
        self._views_cache: tuple | None = None  # see _expert_views
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # peft's default: A ~ kaiming-uniform, B = 0, so a fresh adapter is the identity.
        # transformers' init functions leave weights loaded from a checkpoint alone.
        bound = 1.0 / math.sqrt(self.lora_A.shape[1])
        init.uniform_(self.lora_A, -bound, bound)
        init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        plan = self.dispatch.plan
        if plan is None:  # dense adapter
            return out + (x @ self.lora_A[0]) @ self.lora_B[0] * self.scale
        if plan.num_tokens == 1 and plan.top_k * 2 <= self.num_experts:
            if x.device.type == "cpu" and not torch.is_grad_enabled() and x.dtype == out.dtype == self.lora_A.dtype == self.lora_B.dtype:
                return self._add_chosen_experts_loop(out, x, plan)
            return self._add_chosen_experts_delta(out, x, plan)
        # Other decode steps (few tokens) take the rank-space form whatever the width: the grouped form's
        # sort, gather/scatter and 2E near-empty GEMMs per linear are pure overhead there.
        if self.rank_space or plan.num_tokens <= FEW_TOKENS:
            return self._add_rank_space_delta(out, x, plan)
        # Gate weight and LoRA scale are applied in rank space (r columns) rather than on the output
        # rows, and the rows are added straight into the base output: the [tokens*k, out] traffic
        # is what costs on CPU, not the rank-r matmuls.
        low_rank = grouped_matmul(plan.gather(x), self.lora_A, plan.offsets) * (plan.weight * self.scale)
        return plan.accumulate(out, grouped_matmul(low_rank, self.lora_B, plan.offsets))

    @cached_property
    def rank_space(self) -> bool:
        """Use the all-experts rank-space form when E*r is small next to the layer width.

        Then two dense GEMMs through the E*r-wide rank space (unchosen experts weighted 0) beat
        sorting rows: the grouped form moves [tokens*k, width] rows through a gather and a scatter
        and runs 2E narrow GEMMs per linear, which cost more than the E*r columns on CPU
        (benchmarks/moe_layer.py). Above the threshold the grouped form keeps cost growing with k.
        """
        in_features, out_features = self.lora_A.shape[1], self.lora_B.shape[2]
        return self.num_experts * self.rank * RANK_SPACE_RATIO <= min(in_features, out_features)

    def _add_chosen_experts_delta(self, out: torch.Tensor, x: torch.Tensor, plan: "DispatchPlan") -> torch.Tensor:
        """``out`` plus one token's k chosen experts only, in place (batch-1 decode).

        A decode step is memory-bound: reading every expert's A and B (the rank-space form) costs
        E/k times the adapter traffic of the chosen ones. The k chosen adapters are gathered and
        applied as one batched product into the k*r rank columns and one GEMM out of them.
        """
        chosen = plan.topk_index[0]
        down = self.lora_A.index_select(0, chosen)  # [k, in, r]
        low_rank = torch.bmm(x.reshape(1, 1, -1).expand(len(chosen), 1, -1), down).view(1, -1)  # [1, k*r]
        up = self.lora_B.index_select(0, chosen).view(-1, self.lora_B.shape[-1])  # [k*r, out]
        low_rank = low_rank * plan.chosen_weights(self.rank)
        # In-place addmm_ gets no autocast: its operands must share out's dtype (bf16 under mixed precision).
        out.view(1, -1).addmm_(low_rank.to(out.dtype), up.to(out.dtype), alpha=self.scale)
        return out

    def _add_chosen_experts_loop(self, out: torch.Tensor, x: torch.Tensor, plan: "DispatchPlan") -> torch.Tensor:
        """The same sum as :meth:`_add_chosen_experts_delta`, one ``addmm_`` per chosen expert (CPU inference).

        On CPU a decode step's cost is mostly operator dispatch: with the gate weights as Python
        numbers (``alpha``) and per-expert views kept between steps, each expert is two BLAS calls,
        which makes this form cost what the dense adapter costs. (One GEMM into all E*r rank columns
        of a cached [in, E*r] ``lora_A`` saves a call per expert but measured slower in generation:
        it reads E/k times the A weights.) Not used with autograd (the gate weights would get no
        gradient), on accelerators (reading the weights back to the host would stall the stream)
        or under autocast (``addmm_`` would need casts).
        """
        downs, ups = self._expert_views()
        x_row, out_row = x.reshape(1, -1), out.view(1, -1)
        for expert, weight in plan.chosen_pairs:
            out_row.addmm_(torch.mm(x_row, downs[expert]), ups[expert], alpha=self.scale * weight)
        return out

    def _expert_views(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Per-expert views of ``lora_A`` and ``lora_B``; they see in-place updates, so they are kept until the storage changes."""
        key = (self.lora_A.data_ptr(), self.lora_B.data_ptr())
        if self._views_cache is None or self._views_cache[0] != key:
            self._views_cache = (key, self.lora_A.detach().unbind(0), self.lora_B.detach().unbind(0))
        return self._views_cache[1], self._views_cache[2]

    def _apply(self, fn, recurse=True):
        # .to()/.cuda()/.half() give the parameters new storage: drop what was built from the old one
        # (the caches would keep it alive).
        self._columns_cache = self._views_cache = None
        return super()._apply(fn, recurse)

    def __getstate__(self):
        # deepcopy/pickle: the caches are rebuilt on use; copied, they would be extra copies of A and B.
        return {**super().__getstate__(), "_columns_cache": None, "_views_cache": None}

    def _add_rank_space_delta(self, out: torch.Tensor, x: torch.Tensor, plan: "DispatchPlan") -> torch.Tensor:
        """``out`` plus the LoRA delta through all E*r rank columns (unchosen experts weighted 0), in place.

        The gate weights scale the E*r rank columns (one [N, E*r] product, its weights shared by the
        layer's linears); ``addmm_`` then adds the up-projection into ``out`` in the same BLAS call,
        so no [N, out] temporary is written.
        """
        experts, in_features, rank = self.lora_A.shape
        low_rank = (x.reshape(-1, in_features) @ self._lora_A_columns()) * plan.rank_weights(rank)
        up = self.lora_B.view(experts * rank, -1)
        # In-place addmm_ gets no autocast: its operands must share out's dtype (bf16 under mixed precision).
        out.view(-1, out.shape[-1]).addmm_(low_rank.to(out.dtype), up.to(out.dtype), alpha=self.scale)
        return out

    def _lora_A_columns(self) -> torch.Tensor:
        """``lora_A`` laid out as [in, E*r].

        The layout is a strided copy that costs more than a decode step's product, so without autograd
        it is kept between forwards until A changes (in-place updates bump its version; inference
        tensors have no version, so they are not cached).
        """
        experts, in_features, rank = self.lora_A.shape
        if (torch.is_grad_enabled() and self.lora_A.requires_grad) or self.lora_A.is_inference():
            return self.lora_A.permute(1, 0, 2).reshape(in_features, experts * rank)
        key = (self.lora_A.data_ptr(), self.lora_A.dtype, self.lora_A._version)
        if self._columns_cache is None or self._columns_cache[0] != key:
            with torch.no_grad():
                self._columns_cache = (key, self.lora_A.permute(1, 0, 2).reshape(in_features, experts * rank))
        return self._columns_cache[1]

    @torch.no_grad()
    def merged_base(self) -> nn.Module:
        """The base linear with the (single, dense) adapter folded in."""
        if self.num_experts != 1:
            raise ValueError("only a dense (1-expert) LoRA can be merged")
        delta = (self.lora_A[0] @ self.lora_B[0]) * self.scale  # [in, out]
        if isinstance(self.base, nn.Linear):
            self.base.weight += delta.T.to(self.base.weight.dtype)
        else:
            self.base.weight += delta.to(self.base.weight.dtype)
        return self.base


class FFNExperts(nn.Module):
    """E copies of a decoder MLP, stacked for grouped matmuls.

    Understands the gated layout (``gate_proj``/``up_proj``/``down_proj`` + ``act_fn``:
    Llama, Qwen2, Gemma 3, Mistral) and the plain one (``c_fc``/``c_proj`` + ``act``: GPT-2).
    """

    def __init__(self, mlp: nn.Module, num_experts: int, dispatch: LayerDispatch):
        super().__init__()
        self.dispatch = dispatch
        if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            self.gated, self.act = True, mlp.act_fn
            ins, out = [mlp.gate_proj, mlp.up_proj], mlp.down_proj
        elif all(hasattr(mlp, n) for n in ("c_fc", "c_proj")):
            self.gated, self.act = False, mlp.act
            ins, out = [mlp.c_fc], mlp.c_proj
        else:
            raise TypeError(f"FFN experts do not know the MLP layout of {type(mlp).__name__}")
        w_in = torch.cat([_as_in_out(m) for m in ins], dim=1)
        self.w_in = nn.Parameter(w_in.unsqueeze(0).repeat(num_experts, 1, 1).clone())
        self.w_out = nn.Parameter(_as_in_out(out).unsqueeze(0).repeat(num_experts, 1, 1).clone())
        b_in = [m.bias for m in ins]
        self.b_in = nn.Parameter(torch.cat(b_in).repeat(num_experts, 1)) if all(b is not None for b in b_in) else None
        self.b_out = nn.Parameter(out.bias.detach().repeat(num_experts, 1)) if out.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.dispatch.plan
        hidden = grouped_matmul(plan.gather(x), self.w_in, plan.offsets)
        if self.b_in is not None:
            hidden = hidden + self.b_in[plan.expert_index]
        if self.gated:
            gate, up = hidden.chunk(2, dim=-1)
            hidden = self.act(gate) * up
        else:
            hidden = self.act(hidden)
        rows = grouped_matmul(hidden, self.w_out, plan.offsets)
        if self.b_out is not None:
            rows = rows + self.b_out[plan.expert_index]
        return plan.combine(rows, x.shape)


def _as_in_out(module: nn.Module) -> torch.Tensor:
    """Weight of a Linear/Conv1D as [in, out] (detached copy)."""
    weight = module.weight.detach()
    return weight.T.clone() if isinstance(module, nn.Linear) else weight.clone()


class MoEDecoderLayer(nn.Module):
    """Wraps one HF decoder layer: computes the routing plan, then runs the layer whose linears are experts.

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


def find_decoder_layers(language_model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The ModuleList of decoder layers (``model.layers`` for Llama/Qwen2/Gemma, ``transformer.h`` for GPT-2)."""
    for module in language_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise TypeError(f"no ModuleList of {num_layers} decoder layers found in {type(language_model).__name__}")


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
