"""argparse types shared by the sub-commands: a bad number is an argparse error that says what was expected."""
from __future__ import annotations

import argparse
import math


def number_type(kind: type, ok, expected: str):
    """argparse type: ``kind(text)`` if it passes ``ok``, else an argparse error saying what was ``expected``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}")
        return value

    return parse


positive_int = number_type(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number_type(int, lambda v: v >= 0, "a whole number, 0 or more")
positive_float = number_type(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
port_number = number_type(int, lambda v: 0 <= v <= 65535, "a port number 0-65535 (0: any free port)")


def band_list(text: str) -> list[int]:
    """argparse type for --bands: one or three 1-based band indices, comma-separated (4,3,2)."""
    try:
        bands = [int(b) for b in text.split(",")]
    except ValueError:
        bands = []
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or three 1-based band numbers, e.g. 4,3,2")
    return bands
