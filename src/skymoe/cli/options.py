"""argparse types shared by the sub-commands: a bad number is an argparse error that says what was expected."""
from __future__ import annotations

import argparse


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
