"""MGRS-mini: a procedural multi-granularity remote-sensing benchmark with exact ground truth.

Objects from a small catalogue (buildings, vehicles, storage tanks, ships,
aircraft, tree clusters) are drawn on crops of real embedded imagery; every
scene yields samples for every task and granularity of the project schema.
"""
from skymoe.data.mgrs_mini.writer import SPLITS, ensure_generated, generate, load_split

__all__ = ["SPLITS", "ensure_generated", "generate", "load_split"]
