"""The ``Accelerator`` the trainer runs on, and the two gaps of accelerate's it fills on CPU.

FSDP2: accelerate 1.16 turns an FSDP launch (``ACCELERATE_USE_FSDP=true``) into FSDP only on an
accelerator device; on a CPU process group (``ACCELERATE_USE_CPU=1``, gloo) it silently runs
plain DDP. PyTorch's FSDP2 (``fully_shard``) itself works on CPU with gloo, so for that one
case we hand the state accelerate's own FSDP plugin (built from the launcher's ``FSDP_*``
environment, as accelerate would on a GPU): ``prepare`` then shards with ``fully_shard`` and
``save_state``/``get_state_dict`` take their FSDP paths. This is what lets the test suite run
the FSDP code path on a CPU-only machine.

DeepSpeed: with no accelerator device accelerate finds no process-group backend and leaves
every rank believing it is alone (process 0 of 1) although DeepSpeed joined them; naming gloo
(what DeepSpeed's CPU accelerator uses without oneCCL) makes the ranks count right.
"""
from __future__ import annotations

import os


def resolve_precision(precision: str) -> str:
    """``auto`` -> ``bf16`` where this process's device multiplies bfloat16 in hardware, else ``fp32``; the others stand."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(_launch_device()) else "fp32"


def _launch_device():
    """The device :func:`make_accelerator`'s Accelerator will train on, found without making accelerate's state: that
    is a singleton, and one made here would drop the process-group settings make_accelerator passes."""
    import torch
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def native_bf16(device) -> bool:
    """A CUDA GPU that multiplies bfloat16 natively, or a CPU with AMX tiles: there bfloat16 products run several
    times faster than float32; elsewhere bfloat16 is emulated, slower than float32."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    # torch.cpu's AMX check is private, but there since torch 2.1; a torch without it runs fp32
    return device.type == "cpu" and bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def make_accelerator(precision: str, grad_accum: int):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    deepspeed_on_cpu = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and not torch.cuda.is_available()
    accelerator = Accelerator(
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if deepspeed_on_cpu else None,
        mixed_precision="bf16" if precision == "bf16" else "no",
        gradient_accumulation_steps=grad_accum,
        # our schedule counts optimiser steps; accelerate would otherwise step it once per process
        step_scheduler_with_optimizer=False,
    )
    _fsdp_on_cpu(accelerator)
    return accelerator


def _fsdp_on_cpu(accelerator) -> None:
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or accelerator.device.type != "cpu":
        return  # GPUs: accelerate sets FSDP up itself
    if state.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.FSDP) or getattr(state, "fsdp_plugin", None):
        return
    plugin = FullyShardedDataParallelPlugin()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    # Both singletons, as accelerate does for GPUs: every later AcceleratorState() copies the
    # PartialState's type over its own (and a second train() in this process sees FSDP there).
    state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
