"""A tiny saved SkyMoE (MoE, LoRA experts) with a tokenizer built from real RSVQA text, for the eval tests."""
from __future__ import annotations

from pathlib import Path


def save_tiny_model(directory: Path, num_experts: int = 4) -> Path:
    import torch

    from skymoe.data.datasets import load_dataset
    from skymoe.data.processor import SkyMoEProcessor
    from skymoe.data.tokenizer import build_tokenizer
    from skymoe.model.build import build_model, tiny_config

    texts = [t.text for s in load_dataset("rsvqa_lr", "train") for t in s.conversation]
    tokenizer = build_tokenizer(texts, vocab_size=300)
    config = tiny_config(vocab_size=len(tokenizer), moe={"num_experts": num_experts, "top_k": 2})
    torch.manual_seed(0)
    model = build_model(config, tokenizer=tokenizer)
    model.save_pretrained(directory)
    SkyMoEProcessor.from_model_config(config, tokenizer).save_pretrained(directory)
    return directory
