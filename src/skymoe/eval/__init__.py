"""Evaluation: scorers per task family, suites, baselines, routing analysis, reports, lmms-eval plugin."""
from skymoe.eval.runner import evaluate, score

__all__ = ["evaluate", "score"]
