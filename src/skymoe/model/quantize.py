"""Dynamic int8 quantisation (CPU) of a SkyMoE model's LLM linears, for inference."""
from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_int8(model):
    """Dynamic int8 quantisation (CPU) of the LLM's linear layers, in place; returns the model.

    The router gates stay in float: their top-k choice flips on small errors, and they are tiny.
    """
    names = {
        name: torch.ao.quantization.default_dynamic_qconfig
        for name, module in model.language_model.named_modules()
        if isinstance(module, nn.Linear) and ".gate." not in f".{name}."
    }
    with warnings.catch_warnings():  # torch deprecates these kernels in favour of torchao, which is not installed here
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.ao.quantization.quantize_dynamic(model.language_model, names, dtype=torch.qint8, inplace=True)
    return model
