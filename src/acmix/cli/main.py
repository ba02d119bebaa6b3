"""``acmix`` command line: one module per subcommand, each with ``add_parser(subparsers)``.

A subcommand module registers its parser and sets ``func`` (``args -> exit
code``); :func:`dispatch` runs it and turns the errors a user can fix into one
line on stderr (exit code 2; 3 for a diverged training run).  ``ACMIX_DEBUG=1``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from acmix.cli import (
    bench,
    bench_models,
    build_kernel,
    convert_swin,
    export,
    export_model,
    paper,
    presets,
    showcase,
    train,
)
from acmix.cli import eval as eval_cmd

__all__ = ["build_parser", "dispatch", "main", "one_line"]

SUBCOMMANDS = (train, eval_cmd, export, export_model, presets, showcase, bench, bench_models, convert_swin,
               build_kernel, paper)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acmix", description="ACmix models: train, evaluate, export.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line; an error re-raised from a loader worker keeps only its own message."""
    text = str(e).strip()
    if "Original Traceback" in text:  # torch.utils.data re-raises worker errors with the worker's traceback
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last and "Error" in last.split(": ", 1)[0] else last
    if isinstance(e, KeyError):
        text = f"missing key {text}"
    return " ".join(text.split())


def dispatch(args: argparse.Namespace) -> int:
    """Run ``args.func``; user errors become one line on stderr."""
    from acmix.train import DataError
    from acmix.train.engine import TrainingDiverged

    start = time.perf_counter()
    try:
        code = args.func(args)
    except (DataError, ValueError, FileNotFoundError, PermissionError, TrainingDiverged) as e:
        if os.environ.get("ACMIX_DEBUG"):
            raise
        print(f"acmix {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 3 if isinstance(e, TrainingDiverged) else 2
    if args.command in ("train", "eval") and not getattr(args, "print_config", False):
        print(f"{args.command} took {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
