"""argparse ``type`` functions shared by the command line (``acmix.cli``) and the benchmark scripts
(``acmix.analysis``); standard library only, so either imports it without the other."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

__all__ = ["json_dict", "nonnegative_int", "positive_float", "positive_int"]


def json_dict(text: str) -> dict[str, Any]:
    """argparse ``type`` for a JSON object flag."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse ``type`` for a count that must be >= 1 (a batch, rounds, a size)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """argparse ``type`` for a count where 0 means "the default" (threads)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type`` for a finite number > 0 (a tolerance)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value
