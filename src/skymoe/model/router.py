"""Task/granularity-aware router, routing instructions, per-layer expert gates and router losses.

The :class:`Router` runs once per sample: it pools the instruction's LLM input
embeddings and the visual tokens into a routing embedding ``r``, predicts the
task and granularity, and mixes learned soft-prompt tokens ("routing
instructions", RS-MoE's per-expert prompts) that are placed at the ``<route>``
positions. Each MoE layer has an :class:`ExpertGate` conditioned on ``r``:
per token (``routing="token"``) or once per sample (``routing="sequence"``).
With expert LLMs (``expert_type="llm"``) the router itself holds the one
:class:`SequenceGate` and makes one routing instruction per expert.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from skymoe.data.schema import GRANULARITIES, TASKS
from skymoe.model.precision import in_own_precision


@dataclass
class RouterOutput:
    routing_embedding: torch.Tensor  # [B, H]
    task_logits: torch.Tensor  # [B, T]
    granularity_logits: torch.Tensor  # [B, G]
    prompts: torch.Tensor | None  # [B, R, D] routing instructions; [B, E, R, D] (one per expert) for expert LLMs


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over dim 1 of [B, S, D] where mask [B, S] is 1; zeros for rows with an empty mask."""
    if mask is None:
        return values.mean(dim=1)
    mask = mask.to(values.dtype).unsqueeze(-1)
    return (values * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class Router(nn.Module):
    """``num_experts`` > 0: expert LLMs (see :mod:`skymoe.model.expert_llms`): a :class:`SequenceGate` on ``r``
    and one routing instruction per expert: a base prompt per expert, the shared task/granularity mix, and a
    per-expert term generated from ``r`` (zero at start, so that upcycled experts start identical)."""

    def __init__(self, text_size: int, hidden_size: int, num_route_tokens: int, num_experts: int = 0, top_k: int = 1,
                 uniform_gate: bool = False):
        super().__init__()
        self.instruction_proj = nn.Linear(text_size, hidden_size)
        self.visual_proj = nn.Linear(text_size, hidden_size)
        self.mix = nn.Sequential(nn.GELU(), nn.Linear(hidden_size, hidden_size), nn.LayerNorm(hidden_size))
        self.task_head = nn.Linear(hidden_size, len(TASKS))
        self.granularity_head = nn.Linear(hidden_size, len(GRANULARITIES))
        self.num_route_tokens = num_route_tokens
        self.expert_gate = SequenceGate(hidden_size, num_experts, top_k, uniform_gate) if num_experts else None
        self.expert_prompt_proj = None
        if num_route_tokens:
            per_expert = (num_experts,) if num_experts else ()
            self.prompt_base = nn.Parameter(torch.randn(*per_expert, num_route_tokens, text_size) * 0.02)
            self.task_prompts = nn.Parameter(torch.randn(len(TASKS), num_route_tokens, text_size) * 0.02)
            self.granularity_prompts = nn.Parameter(torch.randn(len(GRANULARITIES), num_route_tokens, text_size) * 0.02)
            if num_experts:
                self.expert_prompt_proj = nn.Linear(hidden_size, num_experts * num_route_tokens * text_size)

    @in_own_precision
    def forward(self, instruction_embeds, instruction_mask, visual_tokens=None) -> RouterOutput:
        pooled = self.instruction_proj(masked_mean(instruction_embeds, instruction_mask))
        if visual_tokens is not None:
            pooled = pooled + self.visual_proj(visual_tokens.mean(dim=1))
        routing_embedding = self.mix(pooled)  # r
        task_logits, granularity_logits = self.task_head(routing_embedding), self.granularity_head(routing_embedding)
        prompts = None
        if self.num_route_tokens:
            # Routing instructions are a soft mix by the predicted task/granularity, so they stay
            # differentiable and behave the same in training and inference.
            task_mix = torch.einsum("bt,trd->brd", task_logits.softmax(-1), self.task_prompts)
            granularity_mix = torch.einsum("bg,grd->brd", granularity_logits.softmax(-1), self.granularity_prompts)
            prompts = self.prompt_base
            if self.expert_prompt_proj is not None:  # one instruction per expert: [B, E, R, D]
                prompts = prompts + self.expert_prompt_proj(routing_embedding).view(-1, *prompts.shape)
                task_mix, granularity_mix = task_mix.unsqueeze(1), granularity_mix.unsqueeze(1)
            prompts = prompts + task_mix + granularity_mix
        return RouterOutput(routing_embedding, task_logits, granularity_logits, prompts)


@dataclass
class GateRecord:
    """What one MoE layer decided, kept for losses and analysis."""

    logits: torch.Tensor  # [rows, E]; rows = tokens (token routing) or samples (sequence routing)
    topk_index: torch.Tensor  # [rows, k]
    topk_weight: torch.Tensor  # [rows, k]
    row_mask: torch.Tensor  # [rows] bool: real tokens (padding excluded)
    row_sample: torch.Tensor  # [rows] sample index of each row


class SequenceGate(nn.Module):
    """One top-k choice of experts per sample from the routing embedding (expert LLMs).

    Deterministic: cached generation recomputes it from the prefill's routing embedding at every step
    and so keeps the prefill's choice.
    """

    def __init__(self, routing_size: int, num_experts: int, top_k: int, uniform: bool = False):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        # uniform (moe.gate: uniform, the router-off ablation): every expert with equal weights, no projection
        self.routing_proj = None if uniform else nn.Linear(routing_size, num_experts)

    @in_own_precision
    def forward(self, routing_embedding: torch.Tensor, records: list["GateRecord"] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert index and float32 log gate weight per sample, each [B, k] (renormalised top-k softmax, as
        :class:`ExpertGate`); ``records`` receives the decision (rows = samples)."""
        if self.routing_proj is None:
            logits = routing_embedding.new_zeros(routing_embedding.shape[0], self.num_experts)
        else:
            logits = self.routing_proj(routing_embedding)
        top_logits, index = logits.float().topk(self.top_k, dim=-1)
        # log weights straight from the logits: a weight that underflows to 0 would give log 0 and NaN gradients
        log_weight = top_logits.log_softmax(dim=-1)
        if records is not None:
            rows = torch.arange(logits.shape[0], device=logits.device)
            records.append(GateRecord(logits, index, log_weight.exp(), torch.ones_like(rows, dtype=torch.bool), rows))
        return index, log_weight


class ExpertGate(nn.Module):
    """Top-k softmax gate with renormalised weights; dropless (every token gets k experts)."""

    def __init__(self, hidden_size: int, routing_size: int, num_experts: int, top_k: int, routing: str, jitter: float):
        super().__init__()
        self.num_experts, self.top_k, self.routing, self.jitter = num_experts, top_k, routing, jitter
        self.routing_proj = nn.Linear(routing_size, num_experts)
        self.token_proj = nn.Linear(hidden_size, num_experts, bias=False) if routing == "token" else None
        self._routing_logits: tuple | None = None  # (embedding, weight versions, logits); see routing_logits

    def routing_logits(self, routing_embedding: torch.Tensor) -> torch.Tensor:
        """[B, E] gate logits from the routing embedding.

        Cached generation passes the prefill's routing embedding (the same tensor) to every decode
        step, so outside autograd the projection is kept while the embedding and the projection's
        weights are unchanged (an in-place weight update bumps their version counters). The cache is
        read once into a local: a concurrent pass with another embedding replaces it, and each recomputes.
        """
        if torch.is_grad_enabled():
            self._routing_logits = None
            return self.routing_proj(routing_embedding)
        weight, bias = self.routing_proj.weight, self.routing_proj.bias
        versions = (weight.data_ptr(), weight._version, bias.data_ptr(), bias._version)
        cached = self._routing_logits
        if cached is None or cached[0] is not routing_embedding or cached[1] != versions:
            self._routing_logits = cached = (routing_embedding, versions, self.routing_proj(routing_embedding))
        return cached[2]

    @in_own_precision
    def forward(self, hidden_states: torch.Tensor, routing_embedding: torch.Tensor | None,
                records: list[GateRecord] | None = None, token_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k expert index and weight per token, each [B*S, k].

        ``records``, if given, receives the decision (a :class:`GateRecord`; ``token_mask`` [B, S] marks
        the real tokens in it): the caller's collector for this pass, so concurrent passes keep their own.
        """
        if routing_embedding is None:
            raise RuntimeError("MoE layer called without a routing embedding: run the full SkyMoE model, not its LLM")
        batch, seq = hidden_states.shape[:2]
        routing_logits = self.routing_logits(routing_embedding)  # [B, E]
        if self.routing == "token":
            x = hidden_states.reshape(batch * seq, -1)
            if self.training and self.jitter:
                x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
            # One addmm with the sample's routing logits as bias: a decode step (seq == 1) runs the same
            # arithmetic as a full forward, so cached and uncached generation choose alike in bf16 too.
            bias = routing_logits if seq == 1 else routing_logits.repeat_interleave(seq, dim=0)
            logits = torch.addmm(bias, x, self.token_proj.weight.t())
        else:
            logits = routing_logits
        # Renormalised top-k softmax probabilities == softmax over the k largest logits (fewer ops per step).
        top_logits, index = logits.float().topk(self.top_k, dim=-1)
        weight = top_logits.softmax(dim=-1).to(hidden_states.dtype)
        if records is not None:
            records.append(self._record(logits, index, weight, token_mask, batch, seq))
        if self.routing == "sequence":  # one decision per sample, shared by all its tokens
            index, weight = index.repeat_interleave(seq, dim=0), weight.repeat_interleave(seq, dim=0)
        return index, weight

    def choose_for_one_token(self, hidden_states: torch.Tensor, routing_embedding: torch.Tensor) -> list[tuple[int, float]] | None:
        """:meth:`forward`'s choice for a single token (token routing, no records), as (expert, weight) Python numbers.

        A CPU decode step's cost is mostly operator dispatch, and the chosen experts are needed as
        Python numbers anyway (:meth:`LoRAExperts._add_chosen_experts_loop`): one ``tolist`` of the E
        logits replaces topk, softmax and two reads. The logits come from the same addmm as in
        :meth:`forward` and are compared as float32, as there; the softmax is in double precision.
        ``None`` for 16-bit logits (a 16-bit model or autocast): ties are common there, and topk
        orders them its own way.
        """
        bias = self.routing_logits(routing_embedding)
        logits = torch.addmm(bias, hidden_states.reshape(1, -1), self.token_proj.weight.t())
        if logits.dtype not in (torch.float32, torch.float64):
            return None
        values = logits[0].float().tolist()
        chosen = heapq.nlargest(self.top_k, range(self.num_experts), key=values.__getitem__)
        exps = [math.exp(values[e] - values[chosen[0]]) for e in chosen]
        total = sum(exps)
        return [(e, x / total) for e, x in zip(chosen, exps)]

    def _record(self, logits, index, weight, token_mask: torch.Tensor | None, batch: int, seq: int) -> GateRecord:
        row_mask = None
        if self.routing == "token":
            row_sample = torch.arange(batch, device=logits.device).repeat_interleave(seq)
            if token_mask is not None and token_mask.shape == (batch, seq):
                row_mask = token_mask.reshape(-1).bool()
        else:
            row_sample = torch.arange(batch, device=logits.device)
        if row_mask is None:
            row_mask = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        return GateRecord(logits, index, weight, row_mask, row_sample)


# ---- losses and statistics over the recorded gate decisions --------------------------------------


def load_balance_loss(records: list[GateRecord], num_experts: int) -> torch.Tensor:
    """Switch Transformer loss E * sum_e f_e * P_e (f: routed fraction, P: mean prob), averaged over layers."""
    losses = []
    for r in records:
        probs = r.logits.float().softmax(-1)[r.row_mask]
        counts = F.one_hot(r.topk_index[r.row_mask], num_experts).sum(dim=(0, 1)).float()
        fraction = counts / counts.sum().clamp(min=1.0)
        losses.append(num_experts * (fraction * probs.mean(dim=0)).sum())
    return torch.stack(losses).mean()


def router_z_loss(records: list[GateRecord]) -> torch.Tensor:
    """ST-MoE z-loss: mean squared log-partition of the gate logits."""
    return torch.stack([torch.logsumexp(r.logits.float()[r.row_mask], dim=-1).pow(2).mean() for r in records]).mean()


def expert_load(records: list[GateRecord], num_experts: int) -> torch.Tensor:
    """[L, E] fraction of routed assignments per layer (padding excluded)."""
    rows = []
    for r in records:
        counts = torch.bincount(r.topk_index[r.row_mask].reshape(-1), minlength=num_experts).float()
        rows.append(counts / counts.sum().clamp(min=1.0))
    return torch.stack(rows).detach()


def sample_expert_weights(records: list[GateRecord], num_experts: int, batch_size: int) -> torch.Tensor:
    """[B, L, E] mean gate weight per sample (over its real tokens) and layer."""
    per_layer = []
    for r in records:
        dense = torch.zeros(r.logits.shape[0], num_experts, device=r.logits.device)
        dense.scatter_(1, r.topk_index, r.topk_weight.float())
        dense = dense * r.row_mask.unsqueeze(1)
        sums = torch.zeros(batch_size, num_experts, device=dense.device).index_add_(0, r.row_sample, dense)
        counts = torch.zeros(batch_size, device=dense.device).index_add_(0, r.row_sample, r.row_mask.float())
        per_layer.append(sums / counts.clamp(min=1.0).unsqueeze(1))
    return torch.stack(per_layer, dim=1).detach()
