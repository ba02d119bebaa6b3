"""``acmix eval``: rebuild the model (from our checkpoint's config or the settings), load weights, evaluate."""

from __future__ import annotations

import dataclasses
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import distributed as D
from .build import amp_settings, build_model, build_transform, resolve_data
from .checkpoint import check_writable, extract_state_dict, load_checkpoint, load_weights, read_error
from .checks import check_types
from .config import TrainConfig, validate
from .data import SafeDataset, build_loader, inspect_data, make_dataset
from .evaluate import evaluate

__all__ = ["EvalConfig", "run_eval", "validate_eval"]


@dataclass
class EvalConfig:
    """What ``acmix eval`` evaluates; ``None`` means "the checkpoint's" (or the data's)."""

    checkpoint: str | None = None  # ours (last/best), a bare state dict or .safetensors
    pretrained_file: str | None = None  # an authors' file, through the model's timm pretrained filter
    model: str | None = None
    data: str | None = None
    dataset: str | None = None
    split: str = "val"
    num_classes: int | None = None
    model_kwargs: dict[str, Any] | None = None
    input_size: list[int] | None = None
    batch_size: int = 256
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    use_ema: bool = False
    subset: int = 0  # only the first N images (0: all)
    results: str | None = None  # also write the metrics to this JSON file


def _config_from(ckpt: dict[str, Any] | None, ec: EvalConfig) -> tuple[TrainConfig, int | None]:
    """The checkpoint's training config (when it is ours) with the eval flags on top."""
    values: dict[str, Any] = {}
    num_classes = None
    if ckpt is not None and isinstance(ckpt.get("config"), dict):
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        values = {k: v for k, v in ckpt["config"].items() if k in names}
        num_classes = ckpt["config"].get("resolved", {}).get("num_classes")
    for key in ("model", "data", "dataset", "model_kwargs", "input_size"):
        if getattr(ec, key, None) is not None:
            values[key] = getattr(ec, key)
    if "model" not in values:
        raise ValueError("--model is required (the checkpoint does not name its model)")
    values.update(amp=ec.amp, channels_last=ec.channels_last, device=ec.device, pretrained=False,
                  drop_path_rate=None, drop_rate=0.0)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg, ec.num_classes or num_classes


def validate_eval(ec: EvalConfig) -> None:
    """Raise ``ValueError`` naming the first bad eval setting, before any work."""
    check_types(ec)
    for name, low in (("batch_size", 1), ("workers", 0), ("subset", 0), ("num_classes", 1)):
        value = getattr(ec, name)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value!r}")
    if ec.input_size is not None and min(ec.input_size) < 1:
        raise ValueError(f"--input-size must be positive, got {ec.input_size!r}")


def run_eval(ec: EvalConfig) -> dict[str, Any]:
    validate_eval(ec)
    if not ec.checkpoint and not ec.pretrained_file:
        raise ValueError("give --checkpoint (ours, a state dict or safetensors) or --pretrained-file")
    if ec.checkpoint and ec.pretrained_file:  # the checkpoint's weights would silently replace the file's
        raise ValueError("give --checkpoint or --pretrained-file, not both")
    if ec.results:  # before the work, not after it
        if Path(ec.results).is_dir():
            raise ValueError(f"--results {ec.results} is a folder; give a file name")
        check_writable(Path(ec.results).parent, "--results folder")
    ckpt = load_checkpoint(ec.checkpoint) if ec.checkpoint else None
    cfg, num_classes = _config_from(ckpt, ec)
    dist = D.setup(cfg.device)
    try:
        info = inspect_data(cfg.data, cfg.dataset, cfg.train_split, ec.split)
        extra: dict[str, Any] = {}
        if ec.pretrained_file:
            path = Path(ec.pretrained_file)
            if not path.is_file():
                raise FileNotFoundError(f"--pretrained-file {str(path)!r} not found")
            cfg = dataclasses.replace(cfg, pretrained=True)
            extra["pretrained_cfg_overlay"] = {"file": str(path)}
        try:
            model = build_model(cfg, num_classes or info.num_classes, info.in_chans, **extra)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            if not ec.pretrained_file:
                raise
            raise read_error(ec.pretrained_file, e) from None
        if ckpt is not None:
            sd = extract_state_dict(ckpt, use_ema=ec.use_ema)
            load_weights(model, sd, f"{ec.checkpoint} does not match {cfg.model}")
        model.to(dist.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        data_cfg = resolve_data(cfg, model, info)
        ds = SafeDataset(make_dataset(info, ec.split, ec.split == cfg.train_split,
                                      build_transform(cfg, data_cfg, train=False)), limit=ec.subset)
        loader = build_loader(ds, batch_size=ec.batch_size, workers=ec.workers, train=False, rank=dist.rank,
                              world_size=dist.world_size)
        autocast, _ = amp_settings(cfg, dist.device)
        metrics: dict[str, Any] = evaluate(model, loader, dist.device, autocast=autocast,
                                           channels_last=cfg.channels_last, progress=dist.is_main)
        metrics.update(model=cfg.model, data=str(info.root), split=ec.split, checkpoint=ec.checkpoint)
        if ec.results and dist.is_main:
            Path(ec.results).write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics
    finally:
        D.cleanup()
