"""MoE layer cost (CPU by default; --device cuda --dtype bf16 on a GPU): forward+backward, fp32, hidden 1024, FFN 2816, 2,048 tokens, E=8, top-2.

(a) LoRA experts (r=16 on gate/up/down, frozen base) / the same FFN with one dense LoRA r=16 (target <= 1.15x)
(b) FFN experts / twice the dense FFN (4,096 token-rows: what top-2 costs at least) (target <= 1.2x),
    beside transformers' own MixtralSparseMoeBlock at the same shapes ("eager" and "grouped_mm" experts).

    python benchmarks/moe_layer.py [--repeats 5] [--out benchmarks/results/moe_layer.md]

Times are medians over ``--repeats`` rounds after one warm-up; in each round every layer runs once
(round-robin), so changing load from other processes affects all layers alike. Not a test.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig, MixtralConfig
from transformers.models.llama.modeling_llama import LlamaMLP
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from skymoe.model.dispatch import LayerDispatch
from skymoe.model.experts import FFNExperts, LoRAExperts
from skymoe.model.install import MoEDecoderLayer
from skymoe.model.router import ExpertGate, RoutingContext

ROUTING_SIZE = 128
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SAMPLES = 8  # 2,048 tokens = 8 samples x 256 tokens (the gate is conditioned on a per-sample routing embedding)


def mlp(hidden: int, ffn: int) -> LlamaMLP:
    module = LlamaMLP(LlamaConfig(hidden_size=hidden, intermediate_size=ffn, hidden_act="silu"))
    for linear in (module.gate_proj, module.up_proj, module.down_proj):
        nn.init.normal_(linear.weight, std=0.02)
    return module


def with_lora(module: LlamaMLP, experts: int, rank: int, dispatch: LayerDispatch) -> LlamaMLP:
    for name in ("gate_proj", "up_proj", "down_proj"):
        lora = LoRAExperts(getattr(module, name), experts, rank, 2.0 * rank, dispatch)
        nn.init.normal_(lora.lora_B, std=0.02)
        setattr(module, name, lora)
    return module


def moe_layer(inner: nn.Module, hidden: int, experts: int, top_k: int, dispatch: LayerDispatch) -> MoEDecoderLayer:
    context = RoutingContext(routing_embedding=torch.randn(SAMPLES, ROUTING_SIZE))
    gate = ExpertGate(hidden, ROUTING_SIZE, experts, top_k, "token", jitter=0.0)
    return MoEDecoderLayer(inner, gate, context, dispatch)


def mixtral(hidden: int, ffn: int, experts: int, top_k: int, implementation: str) -> MixtralSparseMoeBlock:
    config = MixtralConfig(
        hidden_size=hidden, intermediate_size=ffn, num_local_experts=experts, num_experts_per_tok=top_k,
        experts_implementation=implementation,
    )
    block = MixtralSparseMoeBlock(config)
    for param in block.parameters():
        nn.init.normal_(param, std=0.02)
    return block


def synchronize(device: torch.device) -> None:
    """GPU kernels run asynchronously: wait for them before reading the clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fwd_bwd_seconds(module: nn.Module, x: torch.Tensor) -> float:
    """Seconds of one forward + backward (input gradient included, as inside a network)."""
    module.zero_grad(set_to_none=True)
    x.grad = None
    synchronize(x.device)
    start = time.perf_counter()
    module(x).float().pow(2).mean().backward()
    synchronize(x.device)
    return time.perf_counter() - start


def time_round_robin(layers: dict[str, tuple[nn.Module, torch.Tensor]], repeats: int) -> dict[str, float]:
    """Median seconds per layer; layers take turns each round so a shared machine's load hits all alike."""
    for module, x in layers.values():  # warm-up
        fwd_bwd_seconds(module, x)
    times = {name: [] for name in layers}
    for _ in range(repeats):
        for name, (module, x) in layers.items():
            times[name].append(fwd_bwd_seconds(module, x))
    return {name: statistics.median(values) for name, values in times.items()}


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        model = fields.get("Model name", "?").strip()
        cpus = fields.get("CPU(s)", "?").strip()
    except (OSError, subprocess.CalledProcessError):
        model, cpus = platform.processor() or "?", "?"
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{model}, {cpus} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads{gpu}"


def load_average() -> str:
    """1-minute load average: other processes sharing the CPUs slow every layer (round-robin keeps ratios fair)."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def run(hidden: int, ffn: int, tokens: int, experts: int, top_k: int, rank: int, repeats: int,
        device: str = "cpu", dtype: torch.dtype = torch.float32) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(SAMPLES, tokens // SAMPLES, hidden, device=device, dtype=dtype, requires_grad=True)
    x2 = torch.randn(2 * SAMPLES, tokens // SAMPLES, hidden, device=device, dtype=dtype, requires_grad=True)
    dense_lora = with_lora(mlp(hidden, ffn), 1, rank, LayerDispatch())  # plan stays None: the dense adapter path
    dispatch = LayerDispatch()
    lora_moe = moe_layer(with_lora(mlp(hidden, ffn), experts, rank, dispatch), hidden, experts, top_k, dispatch)
    form = "rank-space" if lora_moe.layer.gate_proj.rank_space else "grouped"
    dispatch = LayerDispatch()
    ffn_moe = moe_layer(FFNExperts(mlp(hidden, ffn), experts, dispatch), hidden, experts, top_k, dispatch)
    layers = {
        "dense FFN + dense LoRA (frozen base)": (dense_lora, x),
        f"LoRA experts (frozen base, {form} form)": (lora_moe, x),
        "dense FFN x2 (2 x tokens rows)": (mlp(hidden, ffn), x2),
        "FFN experts": (ffn_moe, x),
    }
    # Mixtral's "batched_mm" implementation gathers a weight copy per token-row
    # ([tokens*k, hidden, 2*ffn], ~94 GB here), so only the two that fit in memory are timed.
    for implementation in ("eager", "grouped_mm"):
        layers[f"transformers Mixtral block ({implementation})"] = (mixtral(hidden, ffn, experts, top_k, implementation), x)
    return time_round_robin({name: (place(module, device, dtype), inp) for name, (module, inp) in layers.items()}, repeats)


def place(module: nn.Module, device, dtype) -> nn.Module:
    """``module.to(device, dtype)``, and the routing embedding a MoE layer reads from its context (not a parameter)."""
    if isinstance(module, MoEDecoderLayer):
        module.context.routing_embedding = module.context.routing_embedding.to(device, dtype)
    return module.to(device, dtype)


def report(results: dict[str, float], args) -> str:
    lora_moe = next(v for k, v in results.items() if k.startswith("LoRA experts"))
    lora_ratio = lora_moe / results["dense FFN + dense LoRA (frozen base)"]
    ffn_ratio = results["FFN experts"] / results["dense FFN x2 (2 x tokens rows)"]
    mixtral_best = min(v for k, v in results.items() if k.startswith("transformers Mixtral"))
    lines = [
        f"Shapes: hidden {args.hidden}, FFN {args.ffn}, {args.tokens} tokens, E={args.experts}, top-{args.top_k}, "
        f"LoRA r={args.rank}; {args.dtype} on {args.device}, forward+backward, median of {args.repeats} round-robin rounds after 1 warm-up.",
        f"Machine: {machine()}",
        "",
        "| layer | ms / fwd+bwd |",
        "| --- | ---: |",
        *(f"| {name} | {seconds * 1000:.1f} |" for name, seconds in results.items()),
        "",
        f"(a) LoRA experts / dense LoRA = {lora_ratio:.3f}x (target <= 1.15x)",
        f"(b) FFN experts / dense FFN x2 = {ffn_ratio:.3f}x (target <= 1.2x)",
        f"    FFN experts / fastest transformers Mixtral block = {results['FFN experts'] / mixtral_best:.3f}x (target <= 1.0x)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--ffn", type=int, default=2816)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (scripts/gpu_check.sh)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--out", type=Path, help="also write the report (Markdown) here")
    args = parser.parse_args()
    load_before = load_average()
    results = run(args.hidden, args.ffn, args.tokens, args.experts, args.top_k, args.rank, args.repeats,
                  torch.device(args.device), DTYPES[args.dtype])
    text = report(results, args) + f"\nLoad average (1 min) before / after the run: {load_before} / {load_average()}"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python benchmarks/moe_layer.py", *sys.argv[1:]])
        args.out.write_text(f"# MoE layer benchmark\n\n`{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
