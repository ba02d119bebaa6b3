"""``acmix export CKPT OUT``: a checkpoint's weights to a bare state dict, in the format OUT's extension names."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="write a checkpoint's weights to .safetensors (or .pth/.pt/.bin)")
    p.add_argument("checkpoint")
    p.add_argument("output", help="the file to write: .safetensors, or .pth/.pt/.bin (torch.save)")
    p.add_argument("--use-ema", action="store_true")
    p.set_defaults(func=command)
    return p


def command(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from acmix.train.checkpoint import extract_state_dict, load_checkpoint

    sd = extract_state_dict(load_checkpoint(args.checkpoint), use_ema=args.use_ema)
    save_file({k: v.contiguous() for k, v in sd.items()}, args.output)
    print(f"wrote {len(sd)} tensors to {args.output}")
    return 0
