"""Training configuration: defaults, packaged presets (the paper's recipes) and flag overrides.

Resolution order: :class:`TrainConfig` defaults < preset (packaged name or JSON
file) < command-line flags.  The resolved config is a plain dict (JSON) saved
with every run and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .checks import validate_train

__all__ = ["TrainConfig", "effective_lr", "list_presets", "load_preset", "plain_values", "resolve_config", "validate"]


@dataclass
class TrainConfig:
    # model
    model: str = "acmix_resnet_tiny"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    init_from: str | None = None  # start a new run from these weights (our checkpoint, a state dict, safetensors)
    drop_rate: float = 0.0
    drop_path_rate: float | None = None
    # data
    data: str = "fmnist"  # "fmnist", a Fashion-MNIST IDX folder, or an ImageFolder root (train/, val/)
    dataset: str = "auto"  # auto | fmnist | imagefolder
    train_split: str = "train"
    val_split: str = "val"
    train_subset: int = 0  # use only the first N training samples (0: all)
    val_subset: int = 0
    input_size: list[int] | None = None  # (C, H, W); default: the model's pretrained_cfg
    mean: list[float] | None = None
    std: list[float] | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: str | None = None
    re_prob: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    smoothing: float = 0.1
    workers: int = 2
    pin_memory: bool = False
    # optimisation
    epochs: int = 100
    max_steps: int = 0  # stop after this many optimizer steps (0: no limit); the schedule keeps `epochs`
    batch_size: int = 128  # per process
    grad_accum: int = 1
    opt: str = "sgd"
    lr: float | None = None  # absolute lr; default: lr_base * global_batch / lr_base_size
    lr_base: float = 0.1
    lr_base_size: int = 256
    lr_base_scale: str = "linear"  # linear | sqrt
    momentum: float = 0.9
    weight_decay: float = 1e-4
    opt_eps: float | None = None
    opt_betas: list[float] | None = None
    sched: str = "cosine"
    sched_on_updates: bool = True
    warmup_epochs: int = 0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    cooldown_epochs: int = 0
    clip_grad: float | None = None
    clip_mode: str = "norm"  # norm | value | agc
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    model_ema_warmup: bool = False
    # execution
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    amp: bool = False
    amp_dtype: str = "auto"  # auto (bf16 on CPU, fp16 on CUDA) | bfloat16 | float16
    channels_last: bool = False
    compile: bool = False
    seed: int = 42
    deterministic: bool = False
    threads: int = 0  # torch.set_num_threads per process (0: leave as is)
    # outputs
    output: str = "runs/train"
    resume: str | None = None
    overwrite: bool = False  # a fresh run may replace the previous run in `output`
    checkpoint_every: int = 0  # also save `last` every N optimizer steps (0: at epoch ends only)
    eval_every: int = 1  # evaluate every N epochs (the last epoch always)
    log_interval: int = 50
    tensorboard: bool = False
    plot: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
def list_presets() -> list[str]:
    """Names of the packaged presets (``acmix/train/presets/*.json``)."""
    folder = resources.files("acmix.train") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A packaged preset by name, or a JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ValueError(f"preset file {str(path)!r} " + ("is a folder" if path.is_dir() else "does not exist"))
        text = path.read_text()
    else:
        res = resources.files("acmix.train") / "presets" / f"{name_or_path}.json"
        if not res.is_file():
            raise ValueError(f"unknown preset {name_or_path!r}; packaged presets: {', '.join(list_presets())}")
        text = res.read_text()
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"preset {name_or_path!r} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"preset {name_or_path!r} must be a JSON object, got {type(values).__name__}")
    values = {k: v for k, v in values.items() if not k.startswith("_")}  # "_comment" keys
    check_keys(values, f"preset {name_or_path!r}")
    return values


def check_keys(values: dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(map(repr, unknown))}")


def resolve_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < ``preset`` < ``overrides`` (flags that were given), validated."""
    values: dict[str, Any] = {}
    if preset:
        values.update(load_preset(preset))
    overrides = overrides or {}
    check_keys(overrides, "overrides")
    values.update(overrides)
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the first bad setting (types, ranges, choices)."""
    validate_train(cfg)


PATHS = ("init_from", "data", "output", "resume")  # the settings that name files or folders


def plain_values(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``pathlib.Path`` (any ``os.PathLike``) paths as ``str`` and numpy scalars (``np.int64(90)``)
    as Python numbers: callers in Python pass them, the checks take the command line's types, and the run's
    JSON files hold plain values."""
    plain = {name: os.fspath(value) for name in PATHS if isinstance(value := getattr(cfg, name), os.PathLike)}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "shape", None) == ():
            plain[f.name] = value.item()
    return dataclasses.replace(cfg, **plain) if plain else cfg


def effective_lr(cfg: TrainConfig, world_size: int) -> float:
    """``cfg.lr`` if set, else ``lr_base`` scaled from ``lr_base_size`` to the global batch."""
    if cfg.lr is not None:
        return cfg.lr
    ratio = cfg.batch_size * cfg.grad_accum * world_size / cfg.lr_base_size
    return cfg.lr_base * (ratio ** 0.5 if cfg.lr_base_scale == "sqrt" else ratio)
