"""Loss glue: the weighted total of the model's loss terms plus the CDA contrastive term."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from skymoe.config import LossSection

# model aux-loss name -> LossSection weight field
AUX_WEIGHT_FIELDS = {
    "load_balance": "load_balance",
    "router_z": "router_z",
    "router_task_ce": "router_ce",
    "router_granularity_ce": "router_ce",
}
KNOWN_TERMS = ["lm", *AUX_WEIGHT_FIELDS, "cda"]


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


def loss_terms(output, weights: LossSection, cda_loss: torch.Tensor | None) -> dict[str, tuple[torch.Tensor, float]]:
    """Every term that enters the total, as name -> (value, weight)."""
    terms = {"lm": (output.lm_loss, 1.0)}
    for name, value in (getattr(output, "aux_losses", None) or {}).items():
        if name not in AUX_WEIGHT_FIELDS:
            raise KeyError(f"model returned an unknown aux loss '{name}'; known: {sorted(AUX_WEIGHT_FIELDS)}")
        terms[name] = (value, getattr(weights, AUX_WEIGHT_FIELDS[name]))
    if cda_loss is not None:
        terms["cda"] = (cda_loss, weights.cda)
    return terms


def total_loss(terms: dict[str, tuple[torch.Tensor, float]]) -> torch.Tensor:
    return sum(weight * value for value, weight in terms.values() if weight != 0.0)
