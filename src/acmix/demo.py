"""``python -m acmix.demo`` (``make demo``): train the tiny ACmix net on Fashion-MNIST, test on 10,000 images.

The same as ``acmix train --preset fmnist`` (extra flags are passed through,
e.g. ``--epochs 1``); every epoch ends with an evaluation on the Fashion-MNIST
test set, and the run ends with the line ``test_top1: <value>``.  Everything is
written to ``runs/demo/``: ``config.json``, ``metrics.jsonl``/``.csv``/``.png``,
``last.pth``, ``best.pth`` and ``model.safetensors``.  (The layer showcase that
used to live here is ``acmix showcase``.)
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from acmix.cli.main import build_parser


def _build_kernels() -> None:
    """Build (or load from the cache) the compiled ACmix kernel before the clock starts: it is set-up."""
    try:
        from acmix.ops import native
    except ImportError:
        return
    start = time.perf_counter()
    if getattr(native, "available", lambda: False)():
        print(f"ACmix CPU kernel ready ({time.perf_counter() - start:.1f} s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    from acmix.train import resolve_config, train

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(["train", "--preset", "fmnist", *argv])
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "preset", "print_config")}
    cfg = resolve_config(args.preset, overrides)
    _build_kernels()
    start = time.perf_counter()
    result = train(cfg)
    minutes = (time.perf_counter() - start) / 60
    if result.interrupted:
        print(f"demo interrupted ({result.interrupted}); resume with: python -m acmix.demo --resume auto")
        return 130
    print(f"training + evaluation: {minutes:.2f} min; outputs in {result.output}/")
    print(f"test_top1: {result.metrics['top1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
