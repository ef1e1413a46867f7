"""Stage-2 training steps (router + experts train, AdamW, bf16 autocast): samples/s and peak memory, grouped_mm vs the expert loop.

    python benchmarks/train_step.py --device cuda --out benchmarks/results/train_step.md   (scripts/gpu_check.sh)
    python benchmarks/train_step.py --sizes tiny --steps 2 --device cpu --out /tmp/t.md     (its --dry-run)

Sizes: ``demo`` (the LLM ``make demo`` trains, 4 rank-16 LoRA experts in layers 1 and 3), ``qwen2-0.5b`` (Qwen2-0.5B's
shapes, random weights, 8 FFN experts top-2 in every other layer, as in the SkyMoE paper) and ``tiny`` (for the dry run).
Every size runs twice in one process: with ``torch.nn.functional.grouped_mm`` (what
``skymoe.model.dispatch.grouped_matmul`` uses where the kernel exists and the shapes are aligned), and with the kernel
hidden, so the same code takes its one-GEMM-per-expert loop. Synthetic batches; the vision tower is a 1-layer ViT.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from unittest import mock

import torch

from generate import VISION, make_inputs
from _machine import machine

SIZES = {
    # name: (text config, upcycle settings, batch size, text tokens)
    "tiny": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                  vocab_size=512), dict(num_experts=4, expert_type="ffn", moe_layers=[1]), 2, 16),
    "demo": (dict(hidden_size=128, intermediate_size=320, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=2000), dict(num_experts=4, expert_type="lora", lora_rank=16, moe_layers=[1, 3]), 16, 128),
    # Qwen2-0.5B (config.json of Qwen/Qwen2-0.5B): 24 layers x 896, FFN 4864, 14 heads / 2 KV heads, vocabulary 151,936
    "qwen2-0.5b": (dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
                   dict(num_experts=8, expert_type="ffn", moe_layers=list(range(1, 24, 2))), 8, 512),
}


def build(size: str, device: str):
    from transformers import AutoConfig

    from skymoe.model import SkyMoEForConditionalGeneration
    from skymoe.model.build import build_model, make_config, vision_config_for

    text, moe, _, _ = SIZES[size]
    text = dict(text)
    vocab = text.pop("vocab_size")
    family = "llama" if size == "demo" else "qwen2"
    torch.manual_seed(0)
    with torch.device(device):  # random init straight on the device: 0.5B parameters initialise in seconds there
        config = make_config(vision_config_for("vit", 64, **VISION), AutoConfig.for_model(family, **text), image_size=64,
                             vocab_size=vocab, moe={"num_experts": 0, "lora_rank": moe.get("lora_rank", 8)})
        dense = build_model(config)
        settings = {k: v for k, v in moe.items() if k != "lora_rank"}
        model = SkyMoEForConditionalGeneration.upcycle(dense, top_k=2, perturb=0.01, **settings)
    del dense
    return model.to(device)


def batch(model, size: str, device: str) -> dict:
    _, _, batch_size, text_len = SIZES[size]
    inputs = make_inputs(model.config, batch_size, text_len=text_len)
    labels = inputs["input_ids"].clone()
    labels[inputs["instruction_mask"] == 0] = -100  # supervise the text, not the route/image placeholders
    return {k: v.to(device) for k, v in {**inputs, "labels": labels}.items()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model, inputs: dict, steps: int, device: str) -> dict:
    """Samples/s over ``steps`` bf16-autocast steps after 2 warm-up steps, and the peak memory of the run."""
    from skymoe.train.metrics import peak_memory_mb

    groups = model.parameter_groups()
    trainable = [p for name in ("router", "experts") for p in groups[name].values()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model.train()
    start = None
    for step in range(steps + 2):
        if step == 2:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    seconds = time.perf_counter() - start
    return {"samples_per_s": inputs["input_ids"].shape[0] * steps / seconds, "peak_mib": peak_memory_mb(),
            "loss": loss.item(), "trainable": sum(p.numel() for p in trainable), "total": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="demo,qwen2-0.5b")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.md"))
    args = parser.parse_args()
    rows = []
    for size in args.sizes.split(","):
        model = build(size, args.device)
        inputs = batch(model, size, args.device)
        # both kernels start from the same weights, so their last losses agree (within bf16) when they compute the same thing
        start = {k: v.clone() for k, v in model.state_dict().items()}
        for kernel in ("grouped_mm", "expert loop"):
            model.load_state_dict(start)
            # hiding the kernel makes grouped_matmul take its per-expert loop (the path for torch without grouped_mm)
            hide = mock.patch.object(torch.nn.functional, "grouped_mm", None) if kernel == "expert loop" else mock.MagicMock()
            with hide:
                r = measure(model, inputs, args.steps, args.device)
            rows.append(f"| {size} | {kernel} | {r['total'] / 1e6:,.1f} M ({r['trainable'] / 1e6:,.1f} M trained) | "
                        f"{inputs['input_ids'].shape[0]} x {inputs['input_ids'].shape[1]} | {r['samples_per_s']:,.1f} | {r['peak_mib']:,.0f} | {r['loss']:.3f} |")
            print(rows[-1], flush=True)
        del model, inputs
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    gpu = f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""
    text = "\n".join([
        "# Stage-2 training steps, bf16 autocast (`benchmarks/train_step.py`)",
        "",
        f"Machine: {machine()}; device {args.device}{gpu}. {args.steps} timed steps after 2 warm-up steps, AdamW on router + experts,",
        "synthetic batches (batch x sequence length in the table). Peak memory: the accelerator's peak allocation on a GPU,",
        "the process's peak RSS on CPU. Models: " + "; ".join(f"`{s}` {SIZES[s][1]}" for s in args.sizes.split(",")) + ".",
        "",
        "| model | expert matmuls | parameters | batch | samples/s | peak MiB | last loss (same start) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
