"""``acmix eval``: rebuild the model (from our checkpoint's config or the flags), load weights, evaluate."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from . import distributed as D
from .build import amp_settings, build_model, build_transform, resolve_data
from .checkpoint import extract_state_dict, load_checkpoint
from .config import TrainConfig
from .data import SafeDataset, build_loader, inspect_data, make_dataset
from .evaluate import evaluate

__all__ = ["run_eval"]


def _config_from(ckpt: dict[str, Any] | None, args: argparse.Namespace) -> tuple[TrainConfig, int | None]:
    """The checkpoint's training config (when it is ours) with the eval flags on top."""
    values: dict[str, Any] = {}
    num_classes = None
    if ckpt is not None and isinstance(ckpt.get("config"), dict):
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in ckpt["config"].items() if k in names}
        num_classes = ckpt["config"].get("resolved", {}).get("num_classes")
    for key in ("model", "data", "dataset", "model_kwargs", "input_size"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if "model" not in values:
        raise ValueError("--model is required (the checkpoint does not name its model)")
    values.update(amp=args.amp, channels_last=args.channels_last, device=args.device, pretrained=False,
                  drop_path_rate=None, drop_rate=0.0)
    return TrainConfig(**values), args.num_classes or num_classes


def _load_weights(model: torch.nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Strict load; missing/unexpected keys and shape mismatches become one ``ValueError``."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    problems = [f"{name} {items[:4]}{'...' if len(items) > 4 else ''}" for name, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))
    model.load_state_dict(sd)


def run_eval(args: argparse.Namespace) -> dict[str, Any]:
    if not args.checkpoint and not args.pretrained_file:
        raise ValueError("give --checkpoint (ours, a state dict or safetensors) or --pretrained-file")
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else None
    cfg, num_classes = _config_from(ckpt, args)
    dist = D.setup(cfg.device)
    try:
        info = inspect_data(cfg.data, cfg.dataset, cfg.train_split, args.split)
        extra: dict[str, Any] = {}
        if args.pretrained_file:
            path = Path(args.pretrained_file)
            if not path.is_file():
                raise FileNotFoundError(f"--pretrained-file {str(path)!r} not found")
            cfg = dataclasses.replace(cfg, pretrained=True)
            extra["pretrained_cfg_overlay"] = {"file": str(path)}
        model = build_model(cfg, num_classes or info.num_classes, info.in_chans, **extra)
        if ckpt is not None:
            sd = extract_state_dict(ckpt, use_ema=args.use_ema)
            _load_weights(model, sd, f"{args.checkpoint} does not match {cfg.model}")
        model.to(dist.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        data_cfg = resolve_data(cfg, model, info)
        ds = SafeDataset(make_dataset(info, args.split, args.split == cfg.train_split,
                                      build_transform(cfg, data_cfg, train=False)), limit=args.subset)
        loader = build_loader(ds, batch_size=args.batch_size, workers=args.workers, train=False, rank=dist.rank,
                              world_size=dist.world_size)
        autocast, _ = amp_settings(cfg, dist.device)
        metrics: dict[str, Any] = evaluate(model, loader, dist.device, autocast=autocast,
                                           channels_last=cfg.channels_last, progress=dist.is_main)
        metrics.update(model=cfg.model, data=str(info.root), split=args.split, checkpoint=args.checkpoint)
        if args.results and dist.is_main:
            Path(args.results).write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics
    finally:
        D.cleanup()
