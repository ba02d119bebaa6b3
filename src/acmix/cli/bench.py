"""``acmix bench -- OPTIONS``: the operator benchmark (``acmix.analysis.op_bench``)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="the operator benchmark (benchmarks/op_bench.py); options after --",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=command)
    return p


def command(args: argparse.Namespace) -> int:
    from acmix.analysis.op_bench import main as bench

    bench([a for a in args.bench_args if a != "--"])
    return 0
