"""The model's objective: the LM cross-entropy plus the weighted router, CDA, box and evidence terms of ``config.loss``.

One owner for the weights (as Mixtral's ``router_aux_loss_coef``): ``output.loss`` is
what training minimises, and ``output.loss_terms`` holds every term unweighted for logging.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from skymoe.data.boxes import X_TOKENS
from skymoe.model import router as routing

IGNORE_INDEX = -100
# Every term a forward can return, in a fixed order (the trainer reduces them over processes by slot).
LOSS_TERMS = ("lm", "load_balance", "router_z", "router_task_ce", "router_granularity_ce", "cda", "box", "evidence")
# term -> the LossSettings field that weighs it
WEIGHT_FIELDS = {
    "load_balance": "load_balance",
    "router_z": "router_z",
    "router_task_ce": "router_ce",
    "router_granularity_ce": "router_ce",
    "cda": "cda",
    "box": "box",
    "evidence": "evidence",
}


def granularity_info_nce(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised InfoNCE over routing embeddings: same-granularity views attract, other levels repel.

    For each anchor with a known label (>= 0) and at least one positive, the
    loss is ``-mean_p log softmax(sim / T)[p]`` over the other embeddings in the
    batch (Khosla et al. 2020, the label-supervised form of InfoNCE). Returns 0
    (with a graph) when no anchor has a positive.
    """
    known = labels >= 0
    z = F.normalize(embeddings[known].float(), dim=-1)
    y = labels[known]
    n = z.shape[0]
    if n < 2:
        return embeddings.sum() * 0.0
    logits = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits.log_softmax(dim=-1).masked_fill(self_mask, 0.0)
    positives = (y[:, None] == y[None, :]) & ~self_mask
    has_pos = positives.any(dim=-1)
    if not has_pos.any():
        return embeddings.sum() * 0.0
    per_anchor = -(log_prob * positives).sum(-1)[has_pos] / positives.sum(-1)[has_pos]
    return per_anchor.mean()


def auxiliary_terms(config, records, router_out, routing_embedding, task_labels, granularity_labels) -> dict[str, torch.Tensor]:
    """The unweighted router terms of one pass, and the CDA term where its weight is set (an MoE model)."""
    terms: dict[str, torch.Tensor] = {}
    num_experts = config.moe["num_experts"]
    if records:
        terms["load_balance"] = routing.load_balance_loss(records, num_experts)
        terms["router_z"] = routing.router_z_loss(records)
    if router_out is not None:
        for name, logits, classes in (
            ("router_task_ce", router_out.task_logits, task_labels),
            ("router_granularity_ce", router_out.granularity_logits, granularity_labels),
        ):
            if classes is not None and bool((classes != IGNORE_INDEX).any()):
                terms[name] = F.cross_entropy(logits.float(), classes, ignore_index=IGNORE_INDEX)
    loss = config.loss
    if loss["cda"] and num_experts and routing_embedding is not None and granularity_labels is not None:
        terms["cda"] = granularity_info_nce(routing_embedding, granularity_labels, loss["cda_temperature"])
    return terms


def weighted_total(config, terms: dict[str, torch.Tensor]) -> torch.Tensor:
    """``lm`` + every other term times its weight (a zero weight leaves its term out, NaN included)."""
    weights = {name: config.loss[field] for name, field in WEIGHT_FIELDS.items()}
    return terms["lm"] + sum(weights[name] * value for name, value in terms.items() if name != "lm" and weights[name])


def location_smoothed_ce(logits: torch.Tensor, targets: torch.Tensor, start: int | None, sigma: float) -> torch.Tensor:
    """Next-token cross-entropy; location-token targets (ids from ``start``) as Gaussians of width ``sigma`` over
    their axis' tokens, so that a box one bin off costs little (``SkyMoEConfig.location_sigma``; 0 = plain)."""
    if start is None or sigma <= 0:
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    valid = targets != IGNORE_INDEX
    logits, targets = logits[valid], targets[valid]
    log_probs = logits.log_softmax(dim=-1)
    losses = -log_probs.gather(1, targets[:, None]).squeeze(1)
    axis_size = len(X_TOKENS)  # the x tokens, then the y tokens: a target is smoothed over its own axis
    offset = targets - start
    is_loc = (offset >= 0) & (offset < 2 * axis_size)
    if is_loc.any():
        first = start + (offset[is_loc] // axis_size) * axis_size  # id of <x_0> or <y_0>
        steps = torch.arange(axis_size, device=logits.device)
        soft = (-0.5 * ((steps[None] - (offset[is_loc, None] % axis_size)).float() / sigma) ** 2).softmax(dim=-1)
        axis_log_probs = log_probs[is_loc].gather(1, first[:, None] + steps[None])
        losses[is_loc] = -(soft * axis_log_probs).sum(dim=-1)
    return losses.sum() / valid.sum().clamp(min=1)
