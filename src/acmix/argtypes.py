"""argparse ``type`` functions shared by the command line (``acmix.cli``) and the benchmark scripts
(``acmix.analysis``); standard library only, so either imports it without the other."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["json_dict"]


def json_dict(text: str) -> dict[str, Any]:
    """argparse ``type`` for a JSON object flag."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value
