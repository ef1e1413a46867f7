"""Memory and time on paper for the papers' sizes on 8 x 80 GB GPUs (docs/TRAINING.md "The path to full size").

    python benchmarks/memory_estimate.py [--out benchmarks/results/memory_estimate.md]

Every number is computed here from model shapes and standard formulas; the sources are printed with the table:

* parameter counts: from the shapes in the models' configs (Vicuna-1.5-7B = Llama-2-7B shapes; CLIP ViT-L/14;
  EVA01-CLIP-g/14 as InstructBLIP uses it, last layer dropped; BLIP-2's Q-Former: 188 M, BLIP-2 paper §3.1);
* model states: ZeRO (Rajbhandari et al. 2020, arXiv:1910.02054, §3.1 and Fig. 1): mixed-precision Adam keeps
  2 + 2 + 12 = 16 bytes per trained parameter (bf16 weight, bf16 gradient, fp32 master weight + 2 moments);
  ZeRO-1/2/3 divide the 12 / 14 / 16 by the GPU count. Frozen parameters: 2 bytes (bf16 weight only), divided
  by the GPU count only under ZeRO-3 / FSDP FULL_SHARD. FSDP SHARD_GRAD_OP ~ ZeRO-2, FULL_SHARD ~ ZeRO-3;
* activations: Korthikanti et al. 2022 (arXiv:2205.05198, §4.1): a transformer layer stores s*b*h*(34 + 5*a*s/h)
  bytes in 16-bit; the 5*a*s/h term (attention scores) is not stored with flash/SDPA attention (Dao et al. 2022),
  leaving 34*s*b*h, of which the MLP is 19*s*b*h: a top-2 MoE layer runs two MLPs per token, 34 + 19 = 53.
  With activation checkpointing a layer keeps its 2*s*b*h input, plus one layer's full activations while it is
  recomputed;
* compute: 2 FLOPs per parameter per token forward, 4 backward for trained weights (Kaplan et al. 2020, arXiv:2001.08361,
  §2.1: 6N per token), 2 for frozen ones on the gradient path (activation gradients only), 2 more for recompute;
  attention scores 4*s^2*h per layer forward (x3 with backward). Only the k chosen experts count as active.
  bf16 dense peak: A100 SXM 312 TFLOP/s, H100 SXM 989 TFLOP/s (NVIDIA datasheets); MFU (achieved/peak) is an
  assumption, stated with the table.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

GPUS, GPU_GB = 8, 80
USABLE = 0.85  # assumption: CUDA context, NCCL buffers and allocator fragmentation take the rest
MFU = 0.35  # assumption: achieved / peak FLOP/s for a 7B MoE-VLM step (PaLM reports 46 % for a dense 540B, arXiv:2204.02311)
PEAK = {"A100-80GB": 312e12, "H100-80GB": 989e12}
BUS_GBPS = 200  # assumption: effective NCCL all-gather / all-to-all bus bandwidth inside an NVLink node, GB/s
NODE_GBPS = 25  # assumption: the same between nodes over one 200 Gb/s InfiniBand link per GPU

# Vicuna-1.5-7B (lmsys/vicuna-7b-v1.5 config.json = Llama-2-7B)
LLM7B = dict(hidden=4096, ffn=11008, layers=32, heads=32, vocab=32000)


def vit_params(width: int, mlp: int, layers: int, patch: int, image: int) -> float:
    tokens = (image // patch) ** 2 + 1
    return layers * (4 * width * width + 2 * width * mlp) + 3 * patch * patch * width + tokens * width


def llm_params(hidden: int, ffn: int, layers: int, vocab: int, **_) -> float:
    return layers * (4 * hidden * hidden + 3 * hidden * ffn) + 2 * vocab * hidden  # untied input / output embeddings


def ffn_params(hidden: int, ffn: int, **_) -> float:
    return 3 * hidden * ffn


@dataclass
class Setup:
    name: str
    frozen: float  # parameters
    trained: float
    seq: int  # tokens per sample through the LLM
    forward: float  # parameters a token multiplies (active: k chosen experts)
    trained_active: float  # of those, trained (weight gradients)
    moe_layers: int
    vision_tokens: int
    note: str


def setups() -> list[Setup]:
    h, f, L, V = LLM7B["hidden"], LLM7B["ffn"], LLM7B["layers"], LLM7B["vocab"]
    llm, one_ffn = llm_params(**LLM7B), ffn_params(**LLM7B)
    clip = vit_params(1024, 4096, 24, 14, 504)  # CLIP ViT-L/14, position embeddings interpolated to 504 px
    clip_tokens = (504 // 14) ** 2
    projector = 1024 * h + h * h  # mlp2x_gelu
    moe_layers, experts, k = L // 2, 8, 2
    experts_total = moe_layers * experts * one_ffn
    lora_qv = L * 2 * 64 * (h + h)  # stage 1: LoRA r=64 on q and v
    text = 512  # assumption: instruction + answer tokens per sample
    s1 = Setup("SkyMoE stage 1 (LoRA r=64 q/v)", clip + llm, projector + lora_qv, clip_tokens + text,
               llm + projector + lora_qv, projector + lora_qv, 0, clip_tokens, "CLIP frozen, LLM frozen + LoRA")
    s2 = Setup("SkyMoE stage 2 (8 FFN experts, top-2, every other layer)", clip + llm - moe_layers * one_ffn + projector,
               experts_total + moe_layers * h * experts, clip_tokens + text,
               llm + moe_layers * (k - 1) * one_ffn + projector, moe_layers * k * one_ffn, moe_layers, clip_tokens,
               "experts + router trained; attention, dense FFNs, embeddings, CLIP, projector frozen")
    eva = vit_params(1408, 6144, 39, 14, 224)  # EVA01-CLIP-g/14 at 224 px without its last layer (InstructBLIP)
    qformer, queries = 188e6, 32
    lora_ffn = L * 64 * ((h + f) + (h + f) + (f + h))  # assumption: r=64 on gate/up/down (the paper gives no rank)
    rs = Setup("RS-MoE (3 LoRA LLM experts on 7B, InstructBLIP base)", eva + llm, qformer + 3 * lora_ffn, queries + text,
               llm + qformer + lora_ffn, qformer + lora_ffn, 0, queries,
               "EVA-CLIP-g and LLM frozen, Q-Former + 3 LoRA experts (r=64 on the FFN, assumed) trained; one expert per sample")
    return [s1, s2, rs]


def states_gb(s: Setup, strategy: str) -> float:
    t, fr, n = s.trained, s.frozen, GPUS
    trained = {"DDP": 16 * t, "ZeRO-1": 4 * t + 12 * t / n, "ZeRO-2 / FSDP SHARD_GRAD_OP": 2 * t + 14 * t / n,
               "ZeRO-3 / FSDP FULL_SHARD": 16 * t / n}[strategy]
    frozen = 2 * fr / n if strategy.startswith("ZeRO-3") else 2 * fr
    return (trained + frozen) / 1e9


def activations_gb(s: Setup, micro_batch: int, checkpointing: bool) -> float:
    h, L, V = LLM7B["hidden"], LLM7B["layers"], LLM7B["vocab"]
    sbh = s.seq * micro_batch * h
    dense, moe = 34 * sbh, 53 * sbh
    full = (L - s.moe_layers) * dense + s.moe_layers * moe
    stored = L * 2 * sbh + (moe if s.moe_layers else dense) if checkpointing else full
    logits = 4 * s.seq * micro_batch * V  # fp32 logits of the supervised positions at most
    return (stored + logits) / 1e9


def flops_per_sample(s: Setup, checkpointing: bool) -> float:
    h, L = LLM7B["hidden"], LLM7B["layers"]
    frozen_active = s.forward - s.trained_active
    per_token = 2 * s.forward + 4 * s.trained_active + 2 * frozen_active + (2 * s.forward if checkpointing else 0)
    attention = 4 * s.seq * s.seq * h * L * (4 if checkpointing else 3)
    return per_token * s.seq + attention


def report() -> str:
    strategies = ["DDP", "ZeRO-1", "ZeRO-2 / FSDP SHARD_GRAD_OP", "ZeRO-3 / FSDP FULL_SHARD"]
    lines = [
        "# Memory and time on paper: the papers' sizes on 8 x 80 GB (`benchmarks/memory_estimate.py`)", "",
        f"Per-GPU memory in GB = model states (16 bytes per trained parameter, 2 per frozen one, sharded per strategy over {GPUS} GPUs)"
        f" + activations of one micro-batch (bf16, flash/SDPA attention). Fits: <= {USABLE:.0%} of {GPU_GB} GB (the rest: CUDA context,"
        " NCCL buffers, fragmentation; an assumption). Sources and formulas: the script's docstring.", "",
    ]
    for s in setups():
        lines += [f"## {s.name}", "",
                  f"{s.note}. Parameters: {s.frozen / 1e9:.2f} B frozen, {s.trained / 1e9:.3f} B trained; "
                  f"{s.forward / 1e9:.2f} B multiply each token (k chosen experts only); {s.seq} tokens per sample "
                  f"({s.vision_tokens} visual + 512 text, an assumption).", "",
                  "| strategy | states GB | + act. b=1, ckpt | + act. b=4, ckpt | + act. b=1, no ckpt | fits (b=4, ckpt) |",
                  "|---|---|---|---|---|---|"]
        for strategy in strategies:
            states = states_gb(s, strategy)
            totals = [states + activations_gb(s, b, c) for b, c in ((1, True), (4, True), (1, False))]
            fits = "yes" if totals[1] <= USABLE * GPU_GB else ("b=1 only" if totals[0] <= USABLE * GPU_GB else "no")
            lines.append(f"| {strategy} | {states:.1f} | {totals[0]:.1f} | {totals[1]:.1f} | {totals[2]:.1f} | {fits} |")
        flops = flops_per_sample(s, checkpointing=True)
        hours = {gpu: 1e6 * flops / (peak * MFU) / 3600 for gpu, peak in PEAK.items()}
        lines += ["", f"Compute: {flops / 1e12:.1f} TFLOP per sample with checkpointing; per 1 M samples at {MFU:.0%} MFU (an assumption): "
                  + "; ".join(f"{gpu} {h_:,.0f} GPU-hours = {h_ / GPUS:,.1f} h on {GPUS}" for gpu, h_ in hours.items()) + ".", ""]
    s2 = setups()[1]
    expert_params = s2.trained - s2.moe_layers * LLM7B["hidden"] * 8
    zero3_bytes = 3 * 2 * expert_params * (GPUS - 1) / GPUS  # all-gather forward + backward, reduce-scatter gradients
    tokens = 4 * s2.seq  # micro-batch 4
    a2a_bytes = 4 * s2.moe_layers * tokens * 2 * LLM7B["hidden"] * 2 * (GPUS - 1) / GPUS  # dispatch + combine, fwd + bwd, top-2
    step_seconds = 4 * flops_per_sample(s2, True) / (PEAK["A100-80GB"] * MFU)
    lines += ["## Expert parallelism: when ZeRO-3's traffic outgrows the step", "",
              f"SkyMoE stage 2, micro-batch 4 per GPU: ZeRO-3 moves the {expert_params / 1e9:.1f} B expert parameters three times per step "
              f"(all-gather forward and backward, reduce-scatter gradients): {zero3_bytes / 1e9:.0f} GB per GPU per step, "
              f"{zero3_bytes / (BUS_GBPS * 1e9):.2f} s at {BUS_GBPS} GB/s (an assumed effective NVLink bus bandwidth). "
              f"Expert parallelism (one expert per GPU) moves the tokens instead: all-to-all dispatch + combine, forward + backward, "
              f"top-2, {a2a_bytes / 1e9:.1f} GB = {a2a_bytes / (BUS_GBPS * 1e9):.2f} s. The step's compute on A100 at {MFU:.0%} MFU: "
              f"{step_seconds:.2f} s. ZeRO-3's traffic does not shrink with the micro-batch (it repeats every micro-batch); "
              f"the all-to-all grows with it. Between nodes (~{NODE_GBPS} GB/s per GPU, assumed) ZeRO-3 needs "
              f"{zero3_bytes / (NODE_GBPS * 1e9):.1f} s per step against {a2a_bytes / (NODE_GBPS * 1e9):.2f} s for the all-to-all.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory_estimate.md"))
    args = parser.parse_args()
    text = report()
    print(text)
    Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
