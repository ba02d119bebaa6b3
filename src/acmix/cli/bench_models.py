"""``acmix bench-models``: the model benchmark (``acmix.analysis.model_bench``) from the command line."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench-models``; its ``func`` returns the exit code."""
    from acmix.analysis.model_bench import add_arguments

    p = subparsers.add_parser("bench-models", help="train/inference img/s and peak memory of whole models "
                                                   "against their baselines (benchmarks/model_bench.py)")
    add_arguments(p)
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from acmix.analysis.model_bench import run_cli

    return run_cli(args)
