"""``acmix convert-swin SRC DST``: an authors' Swin-ACmix file (training dict) to a bare state dict."""

from __future__ import annotations

import argparse
import pickle
from typing import Any

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("convert-swin", help="an authors' Swin-ACmix file (training dict) to a bare state dict")
    p.add_argument("source")
    p.add_argument("output", help=".pth, or .safetensors")
    p.set_defaults(func=command)
    return p


def command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from acmix.models.acmix_swin import convert_checkpoint
    from acmix.train.checkpoint import check_writable, read_error

    check_writable(Path(args.output).absolute().parent, "output folder")  # else a FileExistsError from mkdir
    try:
        keys = convert_checkpoint(args.source, args.output)
    except (pickle.UnpicklingError, RuntimeError, EOFError, UnicodeDecodeError) as e:
        raise read_error(args.source, e) from None  # garbage, truncated or refused: one line naming the file
    print(f"wrote {len(keys)} tensors to {args.output}")
    return 0
