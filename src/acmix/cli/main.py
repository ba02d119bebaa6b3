"""``acmix`` command line: ``train``, ``eval``, ``export``, ``presets``, ``showcase``, ``bench``, ``convert-swin``.

Training flags are generated from :class:`acmix.train.TrainConfig` (``--batch-size``
sets ``batch_size``); only flags that are given override the preset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from acmix.cli import bench_models, build_kernel, paper

__all__ = ["build_parser", "main"]

HELP = {
    "model": "timm model name (any registered model; acmix_* are ours)",
    "data": "'fmnist' (Debian package), a Fashion-MNIST IDX folder, or an ImageFolder root with train/ and val/",
    "dataset": "how to read --data (auto detects)",
    "epochs": "epochs of the schedule",
    "max_steps": "stop (and save) after this many optimizer steps; the schedule keeps --epochs",
    "batch_size": "images per process per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "absolute learning rate (default: --lr-base scaled to the global batch)",
    "amp": "mixed precision (bf16 on CPU, fp16 + GradScaler on CUDA unless --amp-dtype)",
    "resume": "checkpoint to resume from, or 'auto' (OUTPUT/last.pth when it exists)",
    "output": "run folder: config.json, metrics.jsonl/csv/png, last.pth, best.pth, model.safetensors",
    "workers": "data loader worker processes per rank",
    "compile": "torch.compile the model",
    "clip_grad": "gradient clipping threshold (see --clip-mode)",
    "checkpoint_every": "also save last.pth every N optimizer steps",
    "model_kwargs": "JSON object of extra timm.create_model arguments",
    "deterministic": "deterministic kernels (exact resume on CPU)",
    "threads": "torch threads per process (0: PyTorch's default)",
}
ALIASES = {"batch_size": ["-b"], "workers": ["-j"], "drop_path_rate": ["--drop-path"], "model": ["-m"]}


def _json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from acmix.train.config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        kind = str(f.type)
        flags = [f"--{f.name.replace('_', '-')}", *ALIASES.get(f.name, [])]
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": HELP.get(f.name)}
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("dict"):
            kw.update(type=_json_dict, metavar="JSON")
        elif kind.startswith("list"):
            kw.update(nargs="+", type=int if "int" in kind else float)
        else:
            kw["type"] = int if kind.startswith("int") else float if kind.startswith("float") else str
        parser.add_argument(*flags, **kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="acmix", description="ACmix models: train, evaluate, export.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (single process or under torchrun)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", help="packaged preset name (see `acmix presets`) or a JSON file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_config_flags(p)

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
    p.add_argument("--model-kwargs", type=_json_dict, metavar="JSON")
    p.add_argument("--input-size", type=int, nargs=3, metavar=("C", "H", "W"))
    p.add_argument("--batch-size", "-b", type=int, default=256)
    p.add_argument("--workers", "-j", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--use-ema", action="store_true", help="evaluate the checkpoint's EMA weights")
    p.add_argument("--subset", type=int, default=0, help="only the first N images")
    p.add_argument("--results", help="also write the metrics to this JSON file")

    p = sub.add_parser("export", help="write a checkpoint's weights to safetensors")
    p.add_argument("checkpoint")
    p.add_argument("output", help="the .safetensors file to write")
    p.add_argument("--use-ema", action="store_true")

    sub.add_parser("presets", help="list the packaged presets")
    sub.add_parser("showcase", help="the ACmix layer at the four ResNet-50 stage shapes vs the reference")
    p = sub.add_parser("bench", help="the operator benchmark (benchmarks/op_bench.py); options after --",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench_models.add_parser(sub)
    p = sub.add_parser("convert-swin", help="an authors' Swin-ACmix file (training dict) to a bare state dict")
    p.add_argument("source")
    p.add_argument("output", help=".pth, or .safetensors")
    build_kernel.add_parser(sub)
    paper.add_parser(sub)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from acmix.train import resolve_config, train

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "preset", "print_config")}
    cfg = resolve_config(args.preset, overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    result = train(cfg)
    if result.interrupted in ("SIGINT", "SIGTERM"):
        return 130 if result.interrupted == "SIGINT" else 143
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from acmix.train.evaluate_cli import run_eval

    metrics = run_eval(args)
    for k in ("top1", "top5", "loss", "img_per_s", "images"):
        print(f"{k}: {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{k}: {metrics[k]}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from acmix.train.checkpoint import extract_state_dict, load_checkpoint

    sd = extract_state_dict(load_checkpoint(args.checkpoint), use_ema=args.use_ema)
    save_file({k: v.contiguous() for k, v in sd.items()}, args.output)
    print(f"wrote {len(sd)} tensors to {args.output}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from acmix.train import list_presets, load_preset

    for name in list_presets():
        preset = load_preset(name)
        print(f"{name:10s} model={preset.get('model', '-')} opt={preset.get('opt', '-')} "
              f"epochs={preset.get('epochs', '-')}")
    return 0


def cmd_showcase(args: argparse.Namespace) -> int:
    from acmix.analysis.showcase import main as showcase

    showcase()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from acmix.analysis.op_bench import main as bench

    bench([a for a in args.bench_args if a != "--"])
    return 0


def cmd_convert_swin(args: argparse.Namespace) -> int:
    from acmix.models.acmix_swin import convert_checkpoint

    keys = convert_checkpoint(args.source, args.output)
    print(f"wrote {len(keys)} tensors to {args.output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "presets": cmd_presets,
                "showcase": cmd_showcase, "bench": cmd_bench, "convert-swin": cmd_convert_swin,
                "build-kernel": build_kernel.run}
    from acmix.train.data import DataError

    start = time.perf_counter()
    try:
        code = commands.get(args.command, getattr(args, "handler", None))(args)
    except (DataError, ValueError, FileNotFoundError) as e:
        if os.environ.get("ACMIX_DEBUG"):
            raise
        print(f"acmix {args.command}: error: {e}", file=sys.stderr)
        return 2
    if args.command in ("train", "eval") and not getattr(args, "print_config", False):
        print(f"{args.command} took {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
