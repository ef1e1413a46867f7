"""Routing analysis from the routing decisions stored in predictions.

* **Router accuracy**: share of samples whose predicted task (granularity) equals the
  true one, overall, per true class (with its n) and the macro average over classes.
* **Expert load** per MoE layer, by task and by granularity: the mean, over the
  samples of that task/granularity, of each sample's gate-weight distribution
  over experts (the model's ``sample_expert_weights``, rows renormalised to 1).
* Expert LLMs (RS-MoE) have one "layer": the router's single choice per sample, made for the whole LLM.
* **Specialisation index**: mutual information I(C; E) in bits between the class C
  (task or granularity) of a sample and the expert E chosen for one of its
  tokens, with p(e | sample) = the sample's gate-weight distribution and samples
  weighted equally; per layer, its mean over layers, and the mean normalised by
  H(C) (0 = experts ignore the task, 1 = the expert choice reveals the task).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from skymoe.errors import DataError
from skymoe.eval.records import Prediction


def _weights(routed: list[Prediction]) -> np.ndarray:
    """[N, L, E] gate-weight distributions (each row sums to 1)."""
    shapes = {np.shape(p.routing.expert_weights) for p in routed}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise DataError(f"routing.expert_weights must be [layers][experts] of one shape for all records; found {sorted(shapes)}")
    w = np.asarray([p.routing.expert_weights for p in routed], dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise DataError("routing.expert_weights holds negative or non-finite values")
    totals = w.sum(axis=2, keepdims=True)
    return np.divide(w, totals, out=np.full_like(w, 1.0 / w.shape[2]), where=totals > 0)


def mutual_information(classes: list[str], weights: np.ndarray) -> list[float]:
    """I(C; E) in bits per layer for sample classes and [N, L, E] expert distributions."""
    labels = sorted(set(classes))
    onehot = np.asarray([[c == label for label in labels] for c in classes], dtype=np.float64)  # [N, C]
    joint = np.einsum("nc,nle->lce", onehot, weights) / len(classes)  # [L, C, E]
    p_class = joint.sum(axis=2, keepdims=True)
    p_expert = joint.sum(axis=1, keepdims=True)
    ratio = np.divide(joint, p_class * p_expert, out=np.ones_like(joint), where=joint > 0)
    # clipped at 0: MI is non-negative, float round-off can give -1e-16
    return [max(0.0, float(v)) for v in (joint * np.log2(ratio)).sum(axis=(1, 2))]


def _entropy(classes: list[str]) -> float:
    _, counts = np.unique(classes, return_counts=True)
    p = counts / counts.sum()
    return max(0.0, float(-(p * np.log2(p)).sum()))


def _load_by(routed: list[Prediction], weights: np.ndarray, key: str) -> dict[str, list[list[float]]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(routed):
        groups[getattr(p, key)].append(i)
    return {name: weights[idx].mean(axis=0).tolist() for name, idx in sorted(groups.items())}


def _accuracy(routed: list[Prediction], key: str) -> dict:
    hits: dict[str, list[bool]] = defaultdict(list)
    for p in routed:
        hits[getattr(p, key)].append(getattr(p.routing, key) == getattr(p, key))
    every = [h for v in hits.values() for h in v]
    per_class = {k: sum(v) / len(v) for k, v in sorted(hits.items())}
    # the overall share follows the mix (VQA-heavy sets inflate it); the macro average weighs classes equally
    return {"overall": sum(every) / len(every), "macro": sum(per_class.values()) / len(per_class), "per_class": per_class,
            "n_per_class": {k: len(v) for k, v in sorted(hits.items())}}


def _specialisation(routed: list[Prediction], weights: np.ndarray, key: str) -> dict:
    classes = [getattr(p, key) for p in routed]
    per_layer = mutual_information(classes, weights)
    entropy = _entropy(classes)
    mean = float(np.mean(per_layer))
    return {
        "per_layer_bits": per_layer,
        "mean_bits": mean,
        "class_entropy_bits": entropy,
        "normalized": mean / entropy if entropy > 0 else None,
    }


def analyse_routing(predictions: list[Prediction]) -> dict:
    routed = [p for p in predictions if p.routing is not None]
    if not routed:
        return {"status": "unavailable", "reason": "no routing information in the predictions (dense model)"}
    weights = _weights(routed)
    levels = {p.routing.level for p in routed}
    if len(levels) != 1:
        raise DataError(f"routing.level must be one for all records (one model's predictions); found {sorted(levels)}")
    return {
        "status": "ok",
        "n": len(routed),
        "level": levels.pop(),  # "layer": a row per MoE layer; "llm": one sequence-level choice of expert LLMs
        "num_layers": int(weights.shape[1]),
        "num_experts": int(weights.shape[2]),
        "router_accuracy": {key: _accuracy(routed, key) for key in ("task", "granularity")},
        "expert_load": {key: _load_by(routed, weights, key) for key in ("task", "granularity")},
        "specialisation": {key: _specialisation(routed, weights, key) for key in ("task", "granularity")},
    }
