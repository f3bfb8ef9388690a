"""Argument types the bench scripts share: a bad value is argparse's usage error (exit 2), not a traceback
from deep inside a run. ``python bench/SCRIPT.py`` puts this folder on ``sys.path``, so scripts import
it as ``benchargs``."""
from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An int of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def positive_float(text: str) -> float:
    """A number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not above 0")
    return value


def positive_int_list(text: str) -> list[int]:
    """A comma list of ints of at least 1 (in-flight levels)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of whole numbers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more numbers, each at least 1")
    return values
