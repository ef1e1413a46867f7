"""Parameter and FLOP summary: total, trainable and active-per-token parameters, FLOPs per token, per module.

Definitions (written down so the numbers can be checked):
* active per token = parameters a text token's forward touches: every LLM weight except the
  input embedding table (a lookup), with routed experts counted at ``top_k / num_experts``.
* FLOPs per token = 2 x active matmul weights + attention scores/values at ``context`` tokens
  (4 x context x hidden per layer). The vision tower and projector run once per image: their
  FLOPs are measured with ``torch.utils.flop_counter`` on a meta-device forward and reported per image.
* expert LLMs (``expert_type: llm``): a token runs k full passes of the LLM, each with one adapter:
  active = the base LLM + k adapters (as ``top_k / num_experts`` of the experts), and the LLM's FLOPs
  count k times (``llm_passes``). Separate expert LMs (``moe.expert_models``): the base LLM only embeds the
  router's input (no active weights), and each of the k passes runs one expert LM, counted as their mean.
"""
from __future__ import annotations

from pathlib import Path

import torch

from skymoe.errors import ModelFolderError

GROUP_ORDER = ("vision", "projector", "router", "experts", "adapter", "box_head", "lm")


def load_for_summary(config_or_path):
    """A model with meta-device weights (nothing allocated) for a config, a config.json, or a model directory."""
    from skymoe.model.configuration import SkyMoEConfig
    from skymoe.model.modeling import SkyMoEForConditionalGeneration

    config = config_or_path
    if not isinstance(config, SkyMoEConfig):
        path = Path(config_or_path)
        if not (path / "config.json").is_file() and not path.is_file():
            raise ModelFolderError("expected a SkyMoE model directory or its config.json", file=str(path))
        try:
            config = SkyMoEConfig.from_json_file(str(path)) if path.is_file() else SkyMoEConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:  # a truncated or hand-edited config.json
            raise ModelFolderError(f"cannot read the model config: {' '.join(str(exc).split())}", file=str(path)) from None
    with torch.device("meta"):
        return SkyMoEForConditionalGeneration(config)


# An instruction-aware projector (Q-Former, instruction-aware resampler) also reads the instruction: its FLOPs are
# counted for an instruction of this many tokens.
INSTRUCTION_TOKENS = 32


def _vision_flops(model) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    size = model.config.image_size
    pixels = torch.empty(1, 3, size, size, device="meta")
    instruction = torch.empty(1, INSTRUCTION_TOKENS, model.config.text_config.hidden_size, device="meta")
    mask = torch.ones(1, INSTRUCTION_TOKENS, dtype=torch.bool, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.get_image_features(pixels, instruction, mask)
    return int(counter.get_total_flops())


def summarize(config_or_model, context: int = 512) -> dict:
    """Per-group dict of ``total``, ``trainable``, ``active_per_token``, ``flops_per_token`` (+ per-image vision FLOPs)."""
    from skymoe.model.modeling import SkyMoEForConditionalGeneration

    model = config_or_model if isinstance(config_or_model, SkyMoEForConditionalGeneration) else load_for_summary(config_or_model)
    config = model.config
    moe = config.moe
    expert_share = moe["top_k"] / moe["num_experts"] if moe["num_experts"] else 1.0
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is embedding

    rows = {}
    for group, params in model.parameter_groups().items():
        total = sum(p.numel() for p in params.values())
        trainable = sum(p.numel() for p in params.values() if p.requires_grad)
        if group in ("vision", "projector"):
            active = 0
        elif group == "experts":
            active = int(total * expert_share)
        elif group == "router":
            active = sum(p.numel() for n, p in params.items() if ".gate." in n)  # the per-sample router runs once
        else:
            holds_embedding = any(p is embedding for p in params.values())
            active = total - (embedding.numel() if holds_embedding else 0)
            if tied and holds_embedding:
                active += embedding.numel()  # the tied output head is a real matmul (counted once, where the table is)
        rows[group] = {"total": total, "trainable": trainable, "active_per_token": active, "flops_per_token": 2 * active}
    passes = moe["top_k"] if model.has_expert_llms else 1
    if model.expert_lms is None:
        rows["lm"]["flops_per_token"] += _attention_flops(config.text_config, context)
        rows["lm"]["flops_per_token"] *= passes
    else:
        rows["lm"].update(active_per_token=0, flops_per_token=0)
        active = [_active_lm_weights(lm) for lm in model.expert_lms]
        attention = [_attention_flops(lm.config, context) for lm in model.expert_lms]
        rows["experts"].update(active_per_token=passes * sum(active) // len(active),
                               flops_per_token=passes * sum(2 * a + f for a, f in zip(active, attention)) // len(active))
    # counted on a meta-device copy: a loaded model's real weights cannot meet meta inputs
    vision_flops = _vision_flops(model if next(model.parameters()).is_meta else load_for_summary(config))
    summary = {
        "groups": rows,
        "total": sum(r["total"] for r in rows.values()),
        "trainable": sum(r["trainable"] for r in rows.values()),
        "active_per_token": sum(r["active_per_token"] for r in rows.values()),
        "flops_per_token": sum(r["flops_per_token"] for r in rows.values()),
        "vision_flops_per_image": vision_flops,
        "context": context,
        "num_image_tokens": config.num_image_tokens,
        "num_experts": moe["num_experts"],
        "top_k": moe["top_k"] if moe["num_experts"] else 0,
        "llm_passes": passes,
        "expert_models": model.expert_lms is not None,
    }
    return summary


def _attention_flops(text_config, context: int) -> int:
    return 4 * context * text_config.hidden_size * text_config.num_hidden_layers


def _active_lm_weights(lm) -> int:
    """A causal LM's weights a token's pass multiplies by: all but the input embedding table, unless it is the head."""
    embedding, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
    return sum(p.numel() for p in lm.parameters()) - (0 if head is embedding else embedding.numel())


def format_summary(summary: dict) -> str:
    lines = [f"{'module':<10} {'total':>14} {'trainable':>14} {'active/token':>14} {'FLOPs/token':>14}"]
    for group in GROUP_ORDER:
        r = summary["groups"][group]
        lines.append(f"{group:<10} {r['total']:>14,} {r['trainable']:>14,} {r['active_per_token']:>14,} {r['flops_per_token']:>14,}")
    lines.append(
        f"{'all':<10} {summary['total']:>14,} {summary['trainable']:>14,} {summary['active_per_token']:>14,} {summary['flops_per_token']:>14,}"
    )
    lines.append(
        f"experts: {summary['num_experts']} (top-{summary['top_k']}); image: {summary['num_image_tokens']} visual tokens, "
        f"{summary['vision_flops_per_image']:,} FLOPs (vision tower + projector; an instruction-aware projector with a {INSTRUCTION_TOKENS}-token instruction); attention FLOPs at context {summary['context']}"
    )
    if summary["llm_passes"] > 1 and summary["expert_models"]:
        lines.append(f"expert LMs: each token runs {summary['llm_passes']} of them, one per chosen expert (counted at their "
                     "mean size); the base LLM only embeds the router's input")
    elif summary["llm_passes"] > 1:
        lines.append(f"expert LLMs: each token runs {summary['llm_passes']} passes of the LLM, one per chosen expert "
                     f"({summary['llm_passes']}x the LLM's FLOPs; active = the LLM + {summary['top_k']} adapters)")
    lines.append("trainable: requires_grad as the model is built; a training stage decides what it trains (stage 2: experts, router, projector)")
    return "\n".join(lines)
