"""The dispatch plan of one decoder layer's top-k choice and the grouped matmul that runs it.

Dispatch: the k assignments of every token are sorted by expert, so each
expert sees one contiguous slice; the work is two grouped matmuls over
``tokens*k`` rows, whatever the number of experts.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property, partial

import torch
import torch.nn.functional as F


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


# The plan of the decoder layer now running, read by its expert modules: the host model's layer code calls
# its linears/MLP without extra arguments, so the plan cannot reach them as one. A ContextVar, as transformers'
# output collector uses, is per thread and per asyncio task: concurrent forwards on one model do not mix plans.
_ACTIVE_PLAN: ContextVar[DispatchPlan | None] = ContextVar("skymoe_dispatch_plan", default=None)


# While torch.compile traces a whole MoE layer, whose plan is made and read inside the one graph, the plan travels in
# a module global instead: dynamo traces neither ContextVar.get nor set, and it resolves the global's reads to what
# the same trace stored (the compiled graph reads no global at run time, so concurrent passes keep their plans).
# A traced frame that did not make the plan (one split off by a graph break) finds the global unset and reads the
# ContextVar, which breaks the graph there: the read then runs eager and sees the plan of the pass.
_UNSET = object()
_TRACED_PLAN: object = _UNSET


def active_plan() -> DispatchPlan | None:
    """The plan of the MoE layer being run (None: a dense adapter, or outside any MoE layer)."""
    if torch.compiler.is_compiling() and _TRACED_PLAN is not _UNSET:
        return _TRACED_PLAN
    return _ACTIVE_PLAN.get()


@contextmanager
def dispatching(plan: DispatchPlan | None) -> Iterator[None]:
    """Run a layer's experts under ``plan``."""
    global _TRACED_PLAN
    if torch.compiler.is_compiling():
        outer, _TRACED_PLAN = _TRACED_PLAN, plan
        try:
            yield
        finally:
            _TRACED_PLAN = outer
        return
    token = _ACTIVE_PLAN.set(plan)
    try:
        yield
    finally:
        _ACTIVE_PLAN.reset(token)


def _run_under(plan: DispatchPlan | None, function: Callable, *args, **kwargs):
    with dispatching(plan):
        return function(*args, **kwargs)


def keeping_plan(checkpoint: Callable) -> Callable:
    """``checkpoint`` (a torch.utils.checkpoint-like function) whose recompute runs under the plan of the first run.

    The backward pass recomputes a checkpointed decoder layer after its forward returned, outside
    :func:`dispatching`; the plan travels with the recomputed function instead.
    """
    def checkpoint_keeping_plan(function: Callable, *args, **kwargs):
        return checkpoint(partial(_run_under, active_plan(), function), *args, **kwargs)

    return checkpoint_keeping_plan
