"""``acmix eval``: evaluate a checkpoint on a dataset split (argparse here, the work in ``acmix.train``)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from acmix.argtypes import json_dict

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset split")
    p.add_argument("--model", "-m", help="timm model name (default: the checkpoint's)")
    p.add_argument("--checkpoint", help="our .pth (last/best), a bare state dict (.pth/.bin) or .safetensors")
    p.add_argument("--pretrained-file", help="an authors' checkpoint, loaded through the model's timm "
                                             "pretrained filter (pretrained_cfg_overlay file=...)")
    p.add_argument("--data", help="as for train (default: the checkpoint's, else fmnist)")
    p.add_argument("--dataset", choices=("auto", "fmnist", "imagefolder"))
    p.add_argument("--split", default="val", help="ImageFolder split folder; for Fashion-MNIST 'train' "
                                                  "is the 60k set, anything else the 10k test set")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the checkpoint's or the data's)")
    p.add_argument("--model-kwargs", type=json_dict, metavar="JSON")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"))
    p.add_argument("--batch-size", "-b", type=int, default=256)
    p.add_argument("--workers", "-j", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    p.add_argument("--subset", type=int, default=0, help="only the first N images")
    p.add_argument("--results", help="also write the metrics to this JSON file")
    p.set_defaults(func=command)
    return p


def command(args: argparse.Namespace) -> int:
    from acmix.train.evaluate_cli import EvalConfig, run_eval

    names = {f.name for f in dataclasses.fields(EvalConfig)}
    metrics = run_eval(EvalConfig(**{k: v for k, v in vars(args).items() if k in names}))
    for k in ("top1", "top5", "loss", "img_per_s", "images"):
        print(f"{k}: {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}: {metrics[k]}")
    return 0
