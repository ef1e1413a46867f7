"""LoRA and FFN experts: the expert kinds a decoder layer's linears or MLP are replaced by.

Why hand-written: peft cannot express token-routed LoRA experts (a different
adapter mix per token chosen by a gate), and transformers' MoE blocks are tied
to their model families. The same :class:`LoRAExperts` with one expert and no
gate is the dense stage-1 adapter, which makes upcycling an exact copy.
The experts read the running layer's :class:`~skymoe.model.dispatch.DispatchPlan` (:func:`~skymoe.model.dispatch.active_plan`).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init
from transformers.pytorch_utils import Conv1D

from skymoe.model.dispatch import DispatchPlan, active_plan, grouped_matmul


# LoRA experts use the rank-space form while E * r * RANK_SPACE_RATIO <= min(in, out) (see LoRAExperts.rank_space);
# and so does a forward with at most FEW_TOKENS tokens (a decode step), whatever the width, except a single
# token with 2k <= E (batch-1 decode), which reads only its chosen experts.
RANK_SPACE_RATIO = 4
FEW_TOKENS = 64


def linear_features(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):  # GPT-2 style: weight [in, out]
        return module.weight.shape[0], module.weight.shape[1]
    raise TypeError(f"LoRA experts need nn.Linear or Conv1D, got {type(module).__name__}")


class LoRAExperts(nn.Module):
    """``base(x) + sum_e w_e * (x A_e B_e) * alpha/r`` with the frozen base linear; E=1 without a gate = dense LoRA."""

    def __init__(self, base: nn.Module, num_experts: int, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        in_features, out_features = linear_features(base)
        self.num_experts, self.rank, self.scale = num_experts, rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(num_experts, in_features, rank))
        self.lora_B = nn.Parameter(torch.zeros(num_experts, rank, out_features))
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
        plan = active_plan()
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

    @property  # not cached_property: Python 3.11's takes a lock, which torch.compile cannot trace
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
        """Per-expert views of ``lora_A`` and ``lora_B``; they see in-place updates, so they are kept until the storage changes.

        The cache is read once into a local (here and in :meth:`_lora_A_columns`): concurrent forwards may replace it.
        """
        key = (self.lora_A.data_ptr(), self.lora_B.data_ptr())
        cached = self._views_cache
        if cached is None or cached[0] != key:
            self._views_cache = cached = (key, self.lora_A.detach().unbind(0), self.lora_B.detach().unbind(0))
        return cached[1], cached[2]

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
        cached = self._columns_cache
        if cached is None or cached[0] != key:
            with torch.no_grad():
                self._columns_cache = cached = (key, self.lora_A.permute(1, 0, 2).reshape(in_features, experts * rank))
        return cached[1]

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

    def __init__(self, mlp: nn.Module, num_experts: int):
        super().__init__()
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
        plan = active_plan()
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
