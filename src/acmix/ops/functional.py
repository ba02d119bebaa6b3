"""``acmix()``: the functional ACmix op and the one dispatcher over its implementations.

* ``REFERENCE`` (``reference.py``): slow and obvious, always available; every
  other path is tested against it.
* ``EAGER`` (``fast.py``): the exact rewrites in plain PyTorch ops; any device.
* ``COMPILED``: the same, with the window attention on the C++ CPU kernel
  (``native.py``, built on first use with the machine's compiler).
* ``AUTO`` (default): ``COMPILED`` for float32/float64 CPU tensors where the
  kernel builds, except on maps up to 8x8, where the eager dense attention
  measured faster (:func:`acmix.ops.fast.prefer_dense`); else ``EAGER``;
  ``EAGER`` inside ``torch.compile`` and while exporting.

``backend`` picks an implementation per call; :func:`use_backend` sets the
default for a block of code (this thread).
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Iterator

import torch
from torch import Tensor

from . import native
from .common import ACmixWeights
from .config import ACmixConfig, ShiftMode
from .fast import acmix_fast, prefer_dense, shift_conv_fast
from .reference import acmix_reference, shift_conv_reference

__all__ = ["Backend", "acmix", "resolve_backend", "shift_conv", "use_backend"]


class Backend(enum.Enum):
    AUTO = "auto"
    REFERENCE = "reference"
    EAGER = "eager"
    COMPILED = "compiled"


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


def _compiled_fits(x: Tensor) -> bool:
    # traced graphs (torch.compile, export) take the eager path: plain torch ops the compiler can fuse
    return native.fits(x) and not _exporting() and not torch.compiler.is_compiling()


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def resolve_backend(x: Tensor, cfg: ACmixConfig, backend: Backend | str | None = None) -> Backend:
    """The implementation a call with this input would use."""
    chosen = _as_backend(backend) if backend is not None else _default()
    if chosen is Backend.AUTO:
        small = x.dim() == 4 and prefer_dense(x.shape[-2], x.shape[-1], cfg)
        return Backend.COMPILED if not small and _compiled_fits(x) and native.available() else Backend.EAGER
    if chosen is Backend.COMPILED:
        if not _compiled_fits(x):
            raise ValueError(f"backend='compiled' runs float32/float64 CPU tensors outside autocast, got {x.dtype} "
                             f"on {x.device}")
        if not native.available():
            raise RuntimeError("backend='compiled' requested but the C++ kernel could not be built; "
                               "use backend='eager'")
    return chosen


def acmix(x: Tensor, weights: ACmixWeights, config: ACmixConfig, *,
          backend: Backend | str | None = None) -> Tensor:
    """ACmix forward ``(B, C_in, H, W) -> (B, C_out, (H-1)//s+1, (W-1)//s+1)``."""
    chosen = resolve_backend(x, config, backend)
    if chosen is Backend.REFERENCE:
        return acmix_reference(x, weights, config)
    return acmix_fast(x, weights, config, compiled=chosen is Backend.COMPILED)


def shift_conv(pieces: Tensor, fc_weight: Tensor, conv_weight: Tensor | None,
               conv_bias: Tensor | None = None, *, kernel_conv: int, out_channels: int,
               stride: int = 1, shift: ShiftMode = ShiftMode.GROUPED,
               fc_bias: Tensor | None = None) -> Tensor:
    """ACmix's convolution path on ``(B, P, D, H, W)`` feature pieces -> ``(B, C_out, Ho, Wo)``.

    Shared by every family (ResNet's q/k/v of each head, SAN's six C/16 pieces,
    Swin's qkv with an ``fc`` bias, PVT's full-resolution q with upsampled k, v).
    """
    impl = shift_conv_reference if _default() is Backend.REFERENCE else shift_conv_fast
    return impl(pieces, fc_weight, conv_weight, conv_bias, kernel_conv=kernel_conv, out_channels=out_channels,
                stride=stride, shift=shift, fc_bias=fc_bias)
