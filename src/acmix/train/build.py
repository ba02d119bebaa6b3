"""Building blocks from timm: model, data config and transforms, loss, AMP settings, determinism."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import timm
import torch
from timm.data import create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

import acmix  # noqa: F401  (registers the acmix_* models)

from ..models._checks import known_model
from .config import TrainConfig
from .data import DatasetInfo

__all__ = ["amp_settings", "build_loss", "build_model", "build_transform", "resolve_data", "seed_all",
           "set_deterministic"]

FMNIST_DATA = {"input_size": (1, 28, 28), "mean": (0.2860,), "std": (0.3530,), "crop_pct": 1.0,
               "interpolation": "bilinear"}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels (errors become warnings where an op has none); no cuDNN autotuning."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def build_model(cfg: TrainConfig, num_classes: int, in_chans: int, **extra: Any) -> nn.Module:
    """``timm.create_model`` with the run's classes, channels, dropout and model kwargs."""
    if not known_model(cfg.model):  # hf-hub: / local-dir: names too
        close = timm.list_models(f"*{cfg.model.split('_')[-1]}*")[:8]
        raise ValueError(f"unknown model {cfg.model!r}" + (f"; similar: {', '.join(close)}" if close else ""))
    for name, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if name in cfg.model_kwargs and cfg.model_kwargs[name] != value:
            raise ValueError(f"--model-kwargs {name}={cfg.model_kwargs[name]!r} contradicts the data, which has "
                             f"{value} {'classes' if name == 'num_classes' else 'channels'}; leave it out")
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, **cfg.model_kwargs, **extra}
    if cfg.drop_rate:
        kwargs["drop_rate"] = cfg.drop_rate
    if cfg.drop_path_rate is not None:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    try:
        return timm.create_model(cfg.model, pretrained=cfg.pretrained, **kwargs)
    except (TypeError, ValueError, IndexError, KeyError, AssertionError) as e:
        hint = _valid_out_indices(cfg.model, kwargs) if "out_indices" in kwargs else ""
        raise ValueError(f"model {cfg.model!r} rejected its arguments {sorted(kwargs)}: "
                         f"{type(e).__name__}: {' '.join(str(e).split())[:200]}{hint}") from None


def _valid_out_indices(name: str, kwargs: dict[str, Any]) -> str:
    """``; valid out_indices: 0..N-1`` from the model's ``feature_info`` (built without ``features_only``)."""
    plain = {k: v for k, v in kwargs.items() if k not in ("features_only", "out_indices", "feature_cls")}
    try:
        n = len(cast("list[Any]", timm.create_model(name, **plain).feature_info))  # timm sets a list
    except Exception:
        return ""
    return f"; valid out_indices: 0..{n - 1} (negative counts from the end)"


def resolve_data(cfg: TrainConfig, model: nn.Module, info: DatasetInfo) -> dict[str, Any]:
    """Input size, mean/std, crop_pct, interpolation: the config's, else the dataset's (Fashion-MNIST)
    or the model's ``pretrained_cfg`` (ImageFolder)."""
    data: dict[str, Any]
    if info.kind == "fmnist":
        data = dict(FMNIST_DATA)
    else:
        data = dict(resolve_data_config({}, model=model))
        c = info.in_chans
        if len(data["mean"]) != c:
            data["mean"], data["std"] = (data["mean"][0],) * c, (data["std"][0],) * c
        data["input_size"] = (c, *data["input_size"][1:])
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation"):
        value = getattr(cfg, key)
        if value is not None:
            data[key] = tuple(value) if isinstance(value, list) else value
    if len(data["mean"]) != data["input_size"][0] or len(data["std"]) != data["input_size"][0]:
        raise ValueError(f"mean {data['mean']} / std {data['std']} do not match {data['input_size'][0]} channels")
    return data


def _pair(values: Any) -> tuple[float, float]:
    """A validated ``(low, high)`` config pair as the tuple timm wants."""
    return cast("tuple[float, float]", tuple(values))


def build_transform(cfg: TrainConfig, data: dict[str, Any], train: bool) -> Callable[..., Any]:
    """timm's ``create_transform``: random-resized crop, flip, jitter, RandAugment, erasing (training)."""
    if not train:
        return create_transform(data["input_size"], is_training=False, interpolation=data["interpolation"],
                                mean=data["mean"], std=data["std"], crop_pct=data["crop_pct"])
    return create_transform(
        data["input_size"], is_training=True, scale=_pair(cfg.scale), ratio=_pair(cfg.ratio),
        hflip=cfg.hflip, color_jitter=cfg.color_jitter or None,  # type: ignore[arg-type]  # timm: None, no jitter
        auto_augment=cfg.auto_augment, interpolation=data["interpolation"],
        mean=data["mean"], std=data["std"], re_prob=cfg.re_prob)


def build_loss(cfg: TrainConfig, mixup: bool) -> nn.Module:
    if mixup:
        return SoftTargetCrossEntropy()  # timm's Mixup folds label smoothing into the soft targets
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler | None]:
    """An autocast context factory and, for fp16 on CUDA, a GradScaler.  bf16 on CPU."""
    if not cfg.amp:
        return contextlib.nullcontext, None
    dtype_name = cfg.amp_dtype
    if dtype_name == "auto":
        dtype_name = "float16" if device.type == "cuda" else "bfloat16"
    if device.type == "cpu" and dtype_name == "float16":
        raise ValueError("amp_dtype='float16' is not supported on CPU; use bfloat16")
    dtype = getattr(torch, dtype_name)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None

    def ctx() -> Any:
        return torch.autocast(device_type=device.type, dtype=dtype)
    return ctx, scaler
