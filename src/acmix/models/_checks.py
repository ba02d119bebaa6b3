"""One-line ``ValueError``s for the options every family takes, checked before timm builds anything.

Without them a negative ``num_classes`` or a ``drop_path_rate`` above 1 builds a
model that trains on garbage, and an out-of-range ``out_indices`` ends in an
``IndexError`` deep inside timm, and an image with the wrong channel count
a multi-line convolution error (``docs/models.md``).
"""

from __future__ import annotations

import numbers
from functools import partial
from typing import Any, TypeVar

from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)

__all__ = ["check_model_kwargs", "with_input_check"]

RATES = ("drop_rate", "drop_path_rate", "proj_drop_rate", "attn_drop_rate", "pos_drop_rate")


def check_model_kwargs(variant: str, kwargs: dict[str, Any], num_features: int) -> None:
    """Refuse bad ``num_classes``, ``in_chans``, dropout rates and ``out_indices`` (``num_features`` levels)."""
    for name, low in (("num_classes", 0), ("in_chans", 1)):
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low):
            raise ValueError(f"{variant}: {name} must be an int >= {low}, got {value!r}")
    for name in RATES:
        value = kwargs.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not 0 <= float(value) < 1):
            raise ValueError(f"{variant}: {name} must be a number in [0, 1), got {value!r}")
    indices = kwargs.get("out_indices")
    if kwargs.get("features_only") and indices is not None:
        items = [indices] if isinstance(indices, (int, str)) else list(indices)
        bad = [i for i in items if isinstance(i, bool) or not isinstance(i, numbers.Integral)
               or not -num_features <= int(i) < num_features]
        if bad or not items:
            raise ValueError(f"{variant}: out_indices={indices!r} is out of range; valid feature levels are "
                             f"0-{num_features - 1} (or -{num_features} to -1)")


def _refuse_wrong_channels(variant: str, conv: nn.Conv2d, args: tuple[Any, ...]) -> None:
    x = args[0] if args else None
    if isinstance(x, Tensor) and x.dim() in (3, 4) and x.shape[-3] != conv.in_channels:
        raise ValueError(f"{variant} takes {conv.in_channels}-channel images (in_chans={conv.in_channels}), "
                         f"got an input of shape {tuple(x.shape)}")


def with_input_check(model: M, variant: str) -> M:
    """``model`` with a check on its first convolution: an image with another channel count gets one line.

    The check is a forward pre-hook on the first ``Conv2d``, so it stays with that
    layer in ``features_only`` wrappers.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None:
        conv.register_forward_pre_hook(partial(_refuse_wrong_channels, variant))
    return model
