"""``acmix presets``: the packaged training presets."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("presets", help="list the packaged presets")
    p.set_defaults(func=command)
    return p


def command(args: argparse.Namespace) -> int:
    from acmix.train import list_presets, load_preset

    for name in list_presets():
        preset = load_preset(name)
        print(f"{name:10s} model={preset.get('model', '-')} opt={preset.get('opt', '-')} "
              f"epochs={preset.get('epochs', '-')}")
    return 0
