"""``acmix build-kernel``: build the compiled CPU kernel now, print where it is and for which CPU level.

For offline clusters and container images: run it once per CPU kind with the
cache (``TORCH_EXTENSIONS_DIR``) the jobs will use; they then load the binary
instead of compiling it (``acmix.ops.native`` explains the cache and the level).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``build-kernel`` on the ``acmix`` command's subparsers."""
    p = subparsers.add_parser("build-kernel", help="build (or find in the cache) the C++ CPU kernel and print its "
                                                   "path; exits 1 with the reason if it cannot be built")
    p.add_argument("--verbose", action="store_true", help="show the compiler's output")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from acmix.ops import native

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the reason is printed below, once
        try:
            config, path = native.build(verbose=args.verbose)
        except RuntimeError as e:
            print(f"acmix build-kernel: {e}", file=sys.stderr)
            return 1
    print(f"{path}\nisa: {config.isa}  flags: {' '.join(config.flags)}  "
          f"({time.perf_counter() - start:.1f} s, compiled or loaded from the cache)")
    return 0
