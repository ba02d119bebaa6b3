"""``acmix export-model``: a model (and optional checkpoint) to ONNX and/or a ``torch.export`` program.

Both keep batch, H and W dynamic; after writing, each artifact is run at the
export size and at ``--check-size`` against the PyTorch model and the largest
differences are printed (a failure exits non-zero).  Wired into ``acmix`` by
``add_parser``; also runs as ``python -m acmix.cli.export_model``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from acmix.argtypes import json_dict, positive_float, positive_int

__all__ = ["add_parser", "main", "run"]


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 224x224), got {text!r}") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export-model", help="a model to ONNX / torch.export with dynamic batch, H, W, "
                                                   "checked against PyTorch at two sizes")
    p.add_argument("model", help="timm model name (acmix_resnet*, acmix_san*, acmix_pvt_*, ...)")
    p.add_argument("--checkpoint", help="weights file (.pth/.safetensors; the authors' layouts load too)")
    p.add_argument("--model-kwargs", type=json_dict, default={}, help="JSON object for timm.create_model")
    p.add_argument("--onnx", help="write an ONNX file here (dynamo exporter)")
    p.add_argument("--legacy", action="store_true", help="use the legacy ONNX exporter (fixed H and W)")
    p.add_argument("--exported-program", help="write a torch.export program (.pt2) here")
    p.add_argument("--size", type=_size, default=(224, 224), help="export size HxW")
    p.add_argument("--check-size", type=_size, default=(256, 320), help="second size checked (not with --legacy)")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--in-chans", type=positive_int, default=3)
    p.add_argument("--rtol", type=positive_float, default=1e-4, help="allowed max |diff| / max |output|")
    p.set_defaults(func=run)
    return p


def _create(args: argparse.Namespace, kwargs: dict[str, Any]) -> Any:
    """``timm.create_model``; a checkpoint that cannot be read or does not fit gets one line naming it."""
    import pickle

    import timm

    from acmix.train.checkpoint import read_error

    try:
        return timm.create_model(args.model, **kwargs)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        text = str(e)
        if not args.checkpoint:
            raise
        if "Error(s) in loading state_dict" in text:  # torch's multi-line key / shape report
            details = " ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
            raise ValueError(f"{args.checkpoint} does not match {args.model}: {details[:300]}") from None
        raise read_error(args.checkpoint, e) from None


def run(args: argparse.Namespace) -> int:
    import torch

    import acmix  # noqa: F401  (registers the models)
    from acmix.export import check_onnx, check_program, export_onnx, export_program
    from acmix.models._checks import known_model
    from acmix.train.checkpoint import check_writable

    if not (args.onnx or args.exported_program):
        raise ValueError("nothing to write: give --onnx and/or --exported-program")
    if args.onnx and not args.onnx.endswith(".onnx"):
        raise ValueError(f"--onnx {args.onnx!r} must end in .onnx")
    if not known_model(args.model):
        raise ValueError(f"unknown model {args.model!r}")
    for out in (args.onnx, args.exported_program):  # before the export, which takes a while
        if out:
            check_writable(Path(out).absolute().parent, "output folder")
    kwargs = dict(args.model_kwargs)
    if args.checkpoint:
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"--checkpoint {args.checkpoint!r} not found")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=args.checkpoint))
    chans = kwargs.setdefault("in_chans", args.in_chans)  # --model-kwargs may set it too
    model = _create(args, kwargs).eval()
    shape = (args.batch, chans, *args.size)
    shapes = [shape, (args.batch + 1, chans, *args.check_size)]
    example = torch.randn(shape)
    if args.exported_program:
        start = time.perf_counter()
        program = export_program(model, example)
        torch.export.save(program, args.exported_program)
        print(f"wrote {args.exported_program} (torch.export, dynamic batch/H/W) in {time.perf_counter() - start:.0f} s")
        for r in check_program(model, program, shapes, rtol=args.rtol):
            print(f"  exported program vs PyTorch at {r}")
    if args.onnx:
        start = time.perf_counter()
        export_onnx(model, example, args.onnx, dynamo=not args.legacy)
        kind = "legacy exporter, fixed H/W" if args.legacy else "dynamo exporter, dynamic batch/H/W"
        print(f"wrote {args.onnx} ({kind}) in {time.perf_counter() - start:.0f} s")
        for r in check_onnx(model, args.onnx, shapes[:1] if args.legacy else shapes, rtol=args.rtol):
            print(f"  onnxruntime vs PyTorch at {r}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="acmix")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export-model", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"acmix export-model: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
