"""Selective precision under autocast: the decoder layers in bfloat16, the small parts that decide in float32.

With ``precision: bf16`` the trainer runs the forward under autocast, which would multiply every linear layer in
bfloat16. Nearly all of a step's products are in the LLM's decoder layers, and those keep autocast. The router,
the projector and the grid heads (box, evidence, and the evidence's pass through the output head) hold few of
the products but make the decisions: which experts, what the image tokens are, where the box is, which answer
the image supports. They run in their own parameters' precision (float32), as Switch Transformer keeps its
router in float32 for stable routing (Fedus et al. 2022, "selective precision"). The LM head's logits follow
autocast, as in any mixed-precision language model; the loss reads them in float32.

Without autocast (fp32 training, evaluation, DeepSpeed's own bf16) all of this is a no-op, and so it is for
parameters held in bf16 (FSDP's mixed-precision policy): their products are bf16 whatever autocast says.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def own_precision(module: nn.Module) -> Iterator[Callable]:
    """A context with autocast off on ``module``'s device when it is on there and the module's parameters are float32;
    yields a function that casts a floating tensor to float32 then (anything else, and otherwise everything,
    passes unchanged). Parameters already in a half precision (FSDP's mixed-precision policy casts them for the
    forward) leave the module under autocast, which still keeps its reductions and norms in float32."""
    parameter = next(module.parameters(), None)
    if parameter is None or parameter.dtype != torch.float32 or not _autocast_on(parameter.device.type):
        yield _unchanged
        return
    with torch.autocast(parameter.device.type, enabled=False):
        yield functools.partial(_cast, dtype=torch.float32)


def in_own_precision(forward: Callable) -> Callable:
    """Decorates a module's ``forward``: under autocast it runs in the module's own precision (see
    :func:`own_precision`), its floating tensor arguments cast to it."""

    @functools.wraps(forward)
    def forward_in_own_precision(self, *args, **kwargs):
        with own_precision(self) as cast:
            return forward(self, *map(cast, args), **{name: cast(value) for name, value in kwargs.items()})

    return forward_in_own_precision


def _autocast_on(device_type: str) -> bool:
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _cast(value, dtype: torch.dtype):
    return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _unchanged(value):
    return value
