"""``acmix()``: the functional ACmix op and the one dispatcher over its implementations.

The reference (``reference.py``) is always available and is what every other
path is tested against.  ``backend`` picks an implementation per call; the
:func:`use_backend` context manager sets the default for a block of code.
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Iterator

from torch import Tensor

from .common import ACmixWeights
from .config import ACmixConfig, ShiftMode
from .reference import acmix_reference, shift_conv_reference

__all__ = ["Backend", "acmix", "resolve_backend", "shift_conv", "use_backend"]


class Backend(enum.Enum):
    AUTO = "auto"
    REFERENCE = "reference"


_state = threading.local()


def _default() -> Backend:
    return getattr(_state, "backend", Backend.AUTO)


@contextlib.contextmanager
def use_backend(backend: Backend | str) -> Iterator[None]:
    """Force ``backend`` for every ACmix call inside the block (this thread)."""
    chosen = _as_backend(backend)
    previous = _default()
    _state.backend = chosen
    try:
        yield
    finally:
        _state.backend = previous


def _as_backend(backend: Backend | str) -> Backend:
    if isinstance(backend, Backend):
        return backend
    try:
        return Backend(backend)
    except ValueError:
        choices = ", ".join(repr(b.value) for b in Backend)
        raise ValueError(f"backend={backend!r} is not one of {choices}") from None


def resolve_backend(x: Tensor, cfg: ACmixConfig, backend: Backend | str | None = None) -> Backend:
    """The implementation a call with this input would use."""
    chosen = _as_backend(backend) if backend is not None else _default()
    if chosen is Backend.AUTO:
        return Backend.REFERENCE
    return chosen


def acmix(x: Tensor, weights: ACmixWeights, config: ACmixConfig, *,
          backend: Backend | str | None = None) -> Tensor:
    """ACmix forward ``(B, C_in, H, W) -> (B, C_out, (H-1)//s+1, (W-1)//s+1)``."""
    resolve_backend(x, config, backend)
    return acmix_reference(x, weights, config)


def shift_conv(pieces: Tensor, fc_weight: Tensor, conv_weight: Tensor | None,
               conv_bias: Tensor | None = None, *, kernel_conv: int, out_channels: int,
               stride: int = 1, shift: ShiftMode = ShiftMode.GROUPED,
               fc_bias: Tensor | None = None) -> Tensor:
    """ACmix's convolution path on ``(B, P, D, H, W)`` feature pieces -> ``(B, C_out, Ho, Wo)``.

    Shared by every family (ResNet's q/k/v of each head, SAN's six C/16 pieces,
    Swin's qkv with an ``fc`` bias, PVT's full-resolution q with upsampled k, v).
    """
    return shift_conv_reference(pieces, fc_weight, conv_weight, conv_bias, kernel_conv=kernel_conv,
                                out_channels=out_channels, stride=stride, shift=shift, fc_bias=fc_bias)
