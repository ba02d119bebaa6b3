"""``acmix export CKPT OUT``: a checkpoint's weights to a bare state dict, in the format OUT's extension names."""

from __future__ import annotations

import argparse
from pathlib import Path
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
    from acmix.train.checkpoint import check_weights_suffix, extract_state_dict, load_checkpoint, save_weights

    src, dst = Path(args.checkpoint), Path(args.output)
    if dst.exists() and src.exists() and dst.samefile(src):
        raise ValueError(f"export would overwrite its input {src}; give another output file")
    check_weights_suffix(dst)  # before reading the checkpoint
    sd = extract_state_dict(load_checkpoint(src), use_ema=args.use_ema)
    save_weights(sd, dst, {"source": src.name})
    print(f"wrote {len(sd)} tensors to {dst} ({'safetensors' if dst.suffix == '.safetensors' else 'torch.save'})")
    return 0
