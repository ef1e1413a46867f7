"""Shared helpers for the model tests: tiny models and batches laid out as the processor lays them out."""
from __future__ import annotations

import torch

from skymoe.model.build import build_model, tiny_config


def make_batch(config, batch_size: int = 2, text_len: int = 6, seed: int = 0, answer_len: int = 3) -> dict:
    """``<s> <route>xR <image>xN text...`` with the last ``answer_len`` tokens supervised."""
    g = torch.Generator().manual_seed(seed)
    vocab = config.text_config.vocab_size
    prefix = 1 + config.num_route_tokens + config.num_image_tokens
    ids = torch.randint(6, vocab, (batch_size, prefix + text_len), generator=g)
    ids[:, 0] = 1
    ids[:, 1 : 1 + config.num_route_tokens] = config.route_token_id
    ids[:, 1 + config.num_route_tokens : prefix] = config.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -answer_len:] = ids[:, -answer_len:]
    instruction = torch.zeros_like(ids)
    instruction[:, prefix : prefix + text_len - answer_len] = 1
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": torch.randn(batch_size, 3, config.image_size, config.image_size, generator=g),
        "labels": labels,
        "instruction_mask": instruction,
        "task_labels": torch.arange(batch_size) % 7,
        "granularity_labels": torch.tensor([0, -100] * batch_size)[:batch_size],
    }


def tiny_model(seed: int = 0, **config_kwargs):
    torch.manual_seed(seed)
    return build_model(tiny_config(**config_kwargs))


def randomize_adapters(model, std: float = 0.05, seed: int = 1) -> None:
    """Fresh LoRA B matrices are zero; give them values so adapters actually change outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * std)
