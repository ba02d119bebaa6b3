"""``acmix train``: flags generated from :class:`acmix.train.TrainConfig` (``--batch-size`` sets ``batch_size``).

Only flags that are given override the preset; the resolved config is then
validated before any work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from acmix.argtypes import json_dict

__all__ = ["add_parser", "command", "config_from_args"]

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
    "overwrite": "let a fresh run replace the previous run in --output (otherwise it refuses)",
    "init_from": "start a new run from these weights (a last.pth/best.pth, a state dict or .safetensors)",
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
OWN_FLAGS = ("command", "func", "preset", "print_config")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from acmix.train.config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        kind = str(f.type)
        flags = [f"--{f.name.replace('_', '-')}", *ALIASES.get(f.name, [])]
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": HELP.get(f.name)}
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind.startswith("dict"):
            kw.update(type=json_dict, metavar="JSON")
        elif kind.startswith("list"):
            kw.update(nargs="+", type=int if "int" in kind else float)
        else:
            kw["type"] = int if kind.startswith("int") else float if kind.startswith("float") else str
        parser.add_argument(*flags, **kw)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model (single process or under torchrun)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", help="packaged preset name (see `acmix presets`) or a JSON file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_config_flags(p)
    p.set_defaults(func=command)
    return p


def config_from_args(args: argparse.Namespace) -> Any:
    """The validated :class:`acmix.train.TrainConfig`: defaults < ``--preset`` < the flags given."""
    from acmix.train import resolve_config

    overrides = {k: v for k, v in vars(args).items() if k not in OWN_FLAGS}
    return resolve_config(args.preset, overrides)


def _defaults_for(cfg: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """Without ``--preset``: a resumed run's settings are its checkpoint's; a new run's, the recipe for its data."""
    from acmix.train import resolve_config
    from acmix.train.recipe import choose_recipe
    from acmix.train.resume import resume_path, saved_settings

    given = {k: v for k, v in vars(args).items() if k not in OWN_FLAGS}
    path = resume_path(cfg.resume, cfg.output)
    saved = saved_settings(path) if path else {}
    if saved:
        return resolve_config(None, {**saved, **given}), f"resume: settings not given are those of {path}"
    return choose_recipe(cfg, given)


def command(args: argparse.Namespace, report: Callable[[Any], int] | None = None) -> int:
    """Train; ``report(result)`` (the demo's summary) gives the exit code when set."""
    from acmix.train import train

    cfg = config_from_args(args)
    if args.preset is None:
        cfg, why = _defaults_for(cfg, args)
        if os.environ.get("RANK", "0") == "0":
            print(why, file=sys.stderr if args.print_config else sys.stdout, flush=True)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    result = train(cfg)
    if report is not None:
        return report(result)
    if result.interrupted in ("SIGINT", "SIGTERM"):
        return 130 if result.interrupted == "SIGINT" else 143
    return 0
