"""``python -m acmix.demo`` (``make demo``): train the tiny ACmix net on Fashion-MNIST, test on 10,000 images.

Exactly ``acmix train --preset fmnist --overwrite`` (the same CLI code; extra
flags are passed through, e.g. ``--epochs 1``), with the compiled kernel built
before the clock starts and a summary at the end: every epoch ends with an
evaluation on the Fashion-MNIST test set, and the run ends with the line
``test_top1: <value>``.  Everything is written to ``runs/demo/`` (``config.json``,
``metrics.jsonl``/``.csv``/``.png``, ``last.pth``, ``best.pth``,
``model.safetensors``), replacing an earlier demo run there.  (The layer
showcase that used to live here is ``acmix showcase``.)
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence
from typing import Any

from acmix.cli import train as train_cmd
from acmix.cli.main import build_parser, dispatch


def _build_kernels() -> None:
    """Build (or load from the cache) the compiled ACmix kernel before the clock starts: it is set-up."""
    try:
        from acmix.ops import native
    except ImportError:
        return
    start = time.perf_counter()
    if getattr(native, "available", lambda: False)():
        print(f"ACmix CPU kernel ready ({time.perf_counter() - start:.1f} s)", flush=True)


def _report(start: float, result: Any) -> int:
    if result.interrupted:
        print(f"demo interrupted ({result.interrupted}); resume with: python -m acmix.demo --resume auto")
        return 130
    print(f"training + evaluation: {(time.perf_counter() - start) / 60:.2f} min; outputs in {result.output}/")
    print(f"test_top1: {result.metrics['top1']:.4f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(["train", "--preset", "fmnist", "--overwrite", *argv])
    _build_kernels()
    args.func = functools.partial(train_cmd.command, report=functools.partial(_report, time.perf_counter()))
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
