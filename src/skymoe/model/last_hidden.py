"""The LLM's last hidden state (after its final norm), which the grid heads read, taken by one forward hook.

transformers' ``output_hidden_states`` records every decoder layer's output through a forward hook on each layer that
reads a ContextVar. Inside a compiled decoder layer (``compile: true``) dynamo cannot trace that read: the graph
breaks there, and inside a compiled MoE layer the break lands in its dispatch context, which sends the whole layer
back to eager. The heads need the last state only: a hook on the decoder itself, which runs eager, takes it.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

# the list this pass's state goes to (None: no pass wants it); per thread and asyncio task, as dispatch's plan
_KEPT: ContextVar[list | None] = ContextVar("skymoe_last_hidden_state", default=None)


def install_last_hidden_hook(decoder: nn.Module) -> None:
    """Hook ``decoder`` (the LLM's base model, whose output has ``last_hidden_state``) for :func:`keeping_last_hidden_state`."""
    decoder.register_forward_hook(_keep)


@contextmanager
def keeping_last_hidden_state() -> Iterator[list[torch.Tensor]]:
    """A list that receives the last hidden state [B, S, D] of each decoder pass run inside the context."""
    kept: list[torch.Tensor] = []
    token = _KEPT.set(kept)
    try:
        yield kept
    finally:
        _KEPT.reset(token)


def _keep(module, args, output) -> None:
    kept = _KEPT.get()
    if kept is not None:
        kept.append(output.last_hidden_state)
