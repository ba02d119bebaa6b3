"""Validation of training and evaluation settings before any work: one ``ValueError`` naming the value.

Types come from the dataclass annotations (a preset's ``"epochs": "ten"`` is
refused like ``--epochs ten``), then ranges: every float finite, counts and
probabilities in range, names among the choices timm accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, cast

__all__ = ["check_types", "validate_train"]

CHOICES = {
    "dataset": ("auto", "fmnist", "imagefolder"),
    "lr_base_scale": ("linear", "sqrt"),
    "clip_mode": ("norm", "value", "agc"),
    "amp_dtype": ("auto", "bfloat16", "float16"),
    "interpolation": (None, "bilinear", "bicubic", "nearest", "lanczos", "hamming", "box", "random"),
    "sched": ("cosine", "tanh", "step", "constant", "multistep", "poly", "wsd", "rsqrt"),
}
POSITIVE = ("epochs", "batch_size", "grad_accum", "lr_base_size", "log_interval")
NON_NEGATIVE_INT = ("workers", "max_steps", "train_subset", "val_subset", "checkpoint_every", "eval_every",
                    "warmup_epochs", "threads", "cooldown_epochs")
NON_NEGATIVE = ("weight_decay", "mixup", "cutmix", "color_jitter", "warmup_lr", "min_lr")
UNIT = ("momentum", "model_ema_decay", "mixup_prob", "mixup_switch_prob", "hflip", "re_prob")  # in [0, 1]
SEED_LIMIT = 2**32


def _kind_ok(value: Any, kind: str) -> bool:
    if value is None:
        return "None" in kind
    if kind.startswith("bool"):
        return isinstance(value, bool)
    if kind.startswith("int"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind.startswith("float"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind.startswith("str"):
        return isinstance(value, str)
    if kind.startswith("list"):
        number = int if "int" in kind else (int, float)
        return isinstance(value, (list, tuple)) and all(
            isinstance(v, number) and not isinstance(v, bool) for v in value)
    if kind.startswith("dict"):
        return isinstance(value, dict)
    return True


def check_types(obj: Any) -> None:
    """Each field of the dataclass ``obj`` holds a value of its annotated type (and floats are finite)."""
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), str(f.type)
        if not _kind_ok(value, kind):
            raise ValueError(f"{f.name} must be {kind.replace(' | None', ' (or null)')}, got {value!r}")
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{f.name} must be finite, got {value!r}")


def _between(cfg: Any, name: str, lo: float, hi: float, hi_open: bool = False) -> None:
    value = getattr(cfg, name)
    if value is not None and not (lo <= value < hi if hi_open else lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}{')' if hi_open else ']'}, got {value!r}")


def _check_opt(name: str) -> None:
    from timm.optim import list_optimizers

    known = set(cast("list[str]", list_optimizers()))  # names (no descriptions asked)
    base = name.lower().removeprefix("lookahead_")
    if base not in known:
        close = difflib.get_close_matches(base, sorted(known), n=4)
        raise ValueError(f"opt={name!r} is not a timm optimizer" + (f"; similar: {', '.join(close)}" if close else ""))


def validate_train(cfg: Any) -> None:
    """Raise ``ValueError`` naming the first bad setting of a :class:`acmix.train.TrainConfig`."""
    check_types(cfg)
    for name, choices in CHOICES.items():
        if getattr(cfg, name) not in choices:
            shown = ", ".join(repr(c) for c in choices if c is not None)
            raise ValueError(f"{name}={getattr(cfg, name)!r} is not one of {shown}")
    _check_opt(cfg.opt)
    for name in POSITIVE:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)!r}")
    for name in NON_NEGATIVE_INT + NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
    for name in UNIT:
        _between(cfg, name, 0.0, 1.0)
    for name in ("smoothing", "drop_rate", "drop_path_rate"):
        _between(cfg, name, 0.0, 1.0, hi_open=True)
    for name in ("lr", "lr_base", "clip_grad", "opt_eps"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.seed < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**32), got {cfg.seed!r}")
    if cfg.crop_pct is not None and not 0 < cfg.crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {cfg.crop_pct!r}")
    if len(cfg.scale) != 2 or not 0 < cfg.scale[0] <= cfg.scale[1] <= 1:
        raise ValueError(f"scale must be [min, max] with 0 < min <= max <= 1, got {cfg.scale!r}")
    if len(cfg.ratio) != 2 or not 0 < cfg.ratio[0] <= cfg.ratio[1]:
        raise ValueError(f"ratio must be [min, max] with 0 < min <= max, got {cfg.ratio!r}")
    if cfg.input_size is not None and (len(cfg.input_size) != 3 or min(cfg.input_size) < 1):
        raise ValueError(f"input_size must be [C, H, W] of positive sizes, got {cfg.input_size!r}")
    if cfg.opt_betas is not None and (len(cfg.opt_betas) != 2 or not all(0 <= b < 1 for b in cfg.opt_betas)):
        raise ValueError(f"opt_betas must be two values in [0, 1), got {cfg.opt_betas!r}")
    if cfg.std is not None and any(s <= 0 for s in cfg.std):
        raise ValueError(f"std must be > 0, got {cfg.std!r}")
