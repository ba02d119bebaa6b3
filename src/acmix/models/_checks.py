"""One-line ``ValueError``s for the options every family takes, checked before timm builds anything.

Without them a negative ``num_classes`` or a ``drop_path_rate`` above 1 builds a
model that trains on garbage, and an out-of-range ``out_indices`` ends in an
``IndexError`` deep inside timm, and an image with the wrong channel count,
dtype or number of dimensions a multi-line error from deep inside a layer
(``docs/models.md``).
"""

from __future__ import annotations

import numbers
from functools import partial
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)

__all__ = ["POOLS", "check_global_pool", "check_model_kwargs", "check_num_classes", "classifier_args", "known_model",
           "with_input_check"]

RATES = ("drop_rate", "drop_path_rate", "proj_drop_rate", "attn_drop_rate", "pos_drop_rate")
# timm's SelectAdaptivePool2d (an AssertionError else); the "fast" forms (flatten while pooling) too, which
# timm's own ResNet and Swin take
POOLS = ("", "avg", "max", "avgmax", "catavgmax", "fast", "fastavg", "fastmax", "fastavgmax", "fastcatavgmax")


def known_model(name: str) -> bool:
    """Whether ``timm.create_model`` can take ``name``: a registered model (a ``.tag`` too), or one named by a
    source, ``hf-hub:`` or ``local-dir:``, whose config timm reads while creating it (``timm.is_model`` says no)."""
    import timm

    source, sep, rest = name.partition(":")
    return bool(sep and source in ("hf-hub", "local-dir") and rest) or timm.is_model(name)


def _check_count(variant: str, name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{variant}: {name} must be an int >= {low}, got {value!r}")


def check_num_classes(model: nn.Module, num_classes: Any) -> int:
    """``reset_classifier``'s ``num_classes`` as an int >= 0 (-1 built no head, 2.5 failed deep in torch)."""
    _check_count(type(model).__name__, "num_classes", num_classes, 0)
    return int(num_classes)


def check_global_pool(global_pool: str, pools: tuple[str, ...], variant: str | None = None) -> str:
    """``global_pool`` if it is one of the family's ``pools``, else one error line (naming ``variant``)."""
    if global_pool not in pools:
        where = f"{variant}: " if variant else ""
        raise ValueError(f"{where}global_pool={global_pool!r} is not one of {', '.join(map(repr, pools))}")
    return global_pool


def classifier_args(model: nn.Module, num_classes: Any, global_pool: str | None,
                    pools: tuple[str, ...]) -> tuple[int, str | None]:
    """``reset_classifier``'s two arguments, checked (``global_pool`` None: keep the model's)."""
    pool = None if global_pool is None else check_global_pool(global_pool, pools)
    return check_num_classes(model, num_classes), pool


def check_model_kwargs(variant: str, kwargs: dict[str, Any], num_features: int,
                       pools: tuple[str, ...] | None = None) -> None:
    """Refuse bad ``num_classes``, ``in_chans``, dropout rates, ``out_indices`` (``num_features`` levels) and,
    where ``pools`` lists the family's pools, ``global_pool``."""
    for name, low in (("num_classes", 0), ("in_chans", 1)):
        if kwargs.get(name) is not None:
            _check_count(variant, name, kwargs[name], low)
    if pools is not None and kwargs.get("global_pool") is not None:
        check_global_pool(kwargs["global_pool"], pools, variant)
    for name in RATES:
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not 0 <= float(value) < 1):
            raise ValueError(f"{variant}: {name} must be a number in [0, 1), got {value!r}")
    indices = kwargs.get("out_indices")
    if kwargs.get("features_only") and isinstance(indices, numbers.Integral) and not isinstance(indices, bool):
        if not 1 <= int(indices) <= num_features:  # timm: an int n takes the last n levels
            raise ValueError(f"{variant}: out_indices={indices!r} (the last n levels) must be 1-{num_features}")
    elif kwargs.get("features_only") and indices is not None:
        items = [indices] if isinstance(indices, (bool, str)) else list(indices)
        bad = [i for i in items if isinstance(i, bool) or not isinstance(i, numbers.Integral)
               or not -num_features <= int(i) < num_features]
        if bad or not items:
            raise ValueError(f"{variant}: out_indices={indices!r} is out of range; valid feature levels are "
                             f"0-{num_features - 1} (or -{num_features} to -1)")
        levels = [int(i) % num_features for i in items]
        if len(set(levels)) != len(levels):  # timm returns each level once; feature_info would list it twice
            raise ValueError(f"{variant}: out_indices={indices!r} names a feature level twice")


def _refuse_wrong_channels(variant: str, conv: nn.Conv2d, args: tuple[Any, ...]) -> None:
    x = args[0] if args else None
    if not isinstance(x, Tensor):
        return
    if x.dim() != 4:  # the families reshape (B, C, H, W) maps: a 3-D image failed deep in timm or torch
        raise ValueError(f"{variant} takes a batch of images (B, C, H, W), got an input of shape {tuple(x.shape)}")
    if x.shape[1] != conv.in_channels:
        raise ValueError(f"{variant} takes {conv.in_channels}-channel images (in_chans={conv.in_channels}), "
                         f"got an input of shape {tuple(x.shape)}")
    weight = conv.weight
    castable = (torch.float32, torch.float16, torch.bfloat16)  # what autocast converts
    autocast = (x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
                and x.dtype in castable and weight.dtype in castable)
    if x.dtype != weight.dtype and not autocast:
        raise ValueError(f"{variant} has {weight.dtype} weights but the images are {x.dtype}: convert one of "
                         f"them (x.to({weight.dtype}) or model.to({x.dtype})), or run under autocast")


def with_input_check(model: M, variant: str) -> M:
    """``model`` with a check on its first convolution: an image with another channel count gets one line.

    The check is a forward pre-hook on the first ``Conv2d``, so it stays with that
    layer in ``features_only`` wrappers.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None:
        conv.register_forward_pre_hook(partial(_refuse_wrong_channels, variant))
    return model
