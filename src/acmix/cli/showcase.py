"""``acmix showcase``: the ACmix layer at the four ResNet-50 stage shapes against the reference."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("showcase", help="the ACmix layer at the four ResNet-50 stage shapes vs the reference")
    p.set_defaults(func=command)
    return p


def command(args: argparse.Namespace) -> int:
    from acmix.analysis.showcase import main as showcase

    showcase()
    return 0
