"""``acmix()``: the functional ACmix op and the one dispatcher over its implementations.

* ``REFERENCE`` (``reference.py``): slow and obvious, always available; every
  other path is tested against it.
* ``EAGER`` (``fast.py``): the exact rewrites in plain PyTorch ops; any device.
* ``CPU_KERNEL`` (formerly ``COMPILED``): the same, with Stage II on the C++
  CPU kernel (``native.py``, compiled with the machine's compiler on first use).
* ``TRITON``: the same, with the window attention in fused Triton kernels
  (``triton_attention.py``); CUDA tensors (CPU tensors under Triton's interpreter).
* ``AUTO`` (default): ``TRITON`` on CUDA where Triton imports; on the CPU the
  faster of ``CPU_KERNEL`` and ``EAGER`` for this input, measured once and
  remembered (``autotune.py``; a size rule where measuring is off); ``EAGER``
  inside ``torch.compile`` and while exporting, and wherever nothing else runs.

The input and weights are validated here, once; the implementations trust them.
``backend`` picks an implementation per call; :func:`use_backend` sets the
default for a block of code (this thread).  See ``docs/fast-paths.md``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from . import autotune, native
from .common import ACmixWeights, check_input, check_weights, data_dependent_ok
from .config import ACmixConfig, Backend, ShiftMode, as_enum
from .fast import acmix_fast, prefer_dense, shift_conv_fast
from .reference import acmix_reference, shift_conv_reference

__all__ = ["Backend", "acmix", "resolve_backend", "shift_conv", "use_backend"]

_state = threading.local()


def _default() -> Backend:
    return getattr(_state, "backend", Backend.AUTO)


@contextlib.contextmanager
def use_backend(backend: Backend | str) -> Iterator[None]:
    """Force ``backend`` for every ACmix call inside the block (this thread)."""
    chosen = as_enum(Backend, backend, "backend")
    previous = _default()
    _state.backend = chosen
    try:
        yield
    finally:
        _state.backend = previous


def _kernel_fits(x: Tensor) -> bool:
    return native.fits(x) and data_dependent_ok()


def _triton_fits(x: Tensor, cfg: ACmixConfig) -> bool:
    if not data_dependent_ok():
        return False
    from . import triton_attention  # imports only the standard library; triton loads on the first launch

    if not triton_attention.available(x):
        return False
    if triton_attention.interpret_on(x) or not cfg.has_attention:  # no shared-memory limit / no attention kernel
        return True
    # q, k and v come out of Stage I's conv: in autocast's dtype where it casts (not float64)
    dtype = x.dtype
    if x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
    return triton_attention.fits(dtype, cfg.head_dim, cfg.kernel_att, cfg.stride, cfg.dilation)


def _training(x: Tensor, w: ACmixWeights) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or any(isinstance(t, Tensor) and t.requires_grad
                                                               for t in w))


def _measured(x: Tensor, w: ACmixWeights, cfg: ACmixConfig) -> Backend:
    """The faster of the CPU kernel and the eager path for this input (``autotune.py``)."""
    training = _training(x, w)
    layout = "cl" if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else "nchw"
    key = (f"{tuple(x.shape)}|{x.dtype}|{layout}|{'train' if training else 'infer'}|"
           f"{cfg.in_channels},{cfg.out_channels},{cfg.heads},{cfg.kernel_att},{cfg.kernel_conv},"
           f"{cfg.stride},{cfg.dilation},{cfg.position_encoding},{cfg.combination.value},{cfg.shift.value}")

    def runner(backend: Backend) -> Callable[[], None]:
        def run() -> None:
            if not training:
                acmix_fast(x, w, cfg, backend)
                return
            # fresh leaves: no gradient reaches the caller's tensors
            fresh_x = x.detach().requires_grad_(x.requires_grad)
            fresh_w = ACmixWeights._make(t.detach().requires_grad_(t.requires_grad) if t is not None else None
                                         for t in w)
            out = acmix_fast(fresh_x, fresh_w, cfg, backend)
            grads = [t for t in (fresh_x, *fresh_w) if t is not None and t.requires_grad]
            torch.autograd.grad(out, grads, torch.ones_like(out))
        return run

    paths = (Backend.CPU_KERNEL, Backend.EAGER)
    winner = autotune.choose(key, {b.value: runner(b) for b in paths}, x.device)
    return Backend(winner)


def resolve_backend(x: Tensor, cfg: ACmixConfig, backend: Backend | str | None = None,
                    weights: ACmixWeights | None = None) -> Backend:
    """The implementation a call with this input would use (``weights`` allow measuring under ``AUTO``)."""
    chosen = as_enum(Backend, backend, "backend") if backend is not None else _default()
    if chosen is Backend.AUTO:
        if cfg.has_attention and x.device.type == "cuda" and _triton_fits(x, cfg):
            chosen = Backend.TRITON  # the interpreter (CPU tensors) only on request
        elif not (_kernel_fits(x) and native.available()):
            return Backend.EAGER
        elif weights is not None and autotune.enabled():
            return _measured(x, weights, cfg)
        else:
            return Backend.EAGER if prefer_dense(x.shape[-2], x.shape[-1], cfg) else Backend.CPU_KERNEL
    elif chosen is Backend.TRITON and not _triton_fits(x, cfg):
        raise ValueError(f"backend='triton' needs Triton and a CUDA tensor (or TRITON_INTERPRET=1 for CPU "
                         f"tensors) whose head dim fits its tiles, got {x.dtype} on {x.device}, head dim "
                         f"{cfg.head_dim}")
    if chosen is Backend.TRITON and x.shape[0] == 0:
        return Backend.EAGER  # an empty batch launches nothing: the eager path's empty output, as nn.Conv2d's
    if chosen is Backend.CPU_KERNEL:
        if not _kernel_fits(x):
            raise ValueError(f"backend='cpu_kernel' runs float32/float64 CPU tensors outside autocast, tracing and "
                             f"torch.func transforms, got {x.dtype} on {x.device}")
        if not native.available():
            raise RuntimeError("backend='cpu_kernel' requested but the C++ kernel could not be built; "
                               "use backend='eager'")
    return chosen


def acmix(x: Tensor, weights: ACmixWeights, config: ACmixConfig, *,
          backend: Backend | str | None = None) -> Tensor:
    """ACmix forward ``(B, C_in, H, W) -> (B, C_out, (H - 1) // s + 1, (W - 1) // s + 1)``.

    Args:
        x: input map, floating point, on the weights' device and in their dtype
            (or under autocast); any memory format.
        weights: the layer's tensors (:class:`ACmixWeights`, the authors' layout).
        config: the static description (:class:`ACmixConfig`): widths, heads,
            kernels, stride, dilation, position encoding, combination, shift mode.
        backend: an implementation (:class:`Backend` or its name) for this call;
            default: the one set by :func:`use_backend`, else ``AUTO``.

    Semantics (``docs/operator.md``): Stage I computes q, k, v with three 1x1
    convolutions; the attention path attends, for every query pixel of the
    stride-``s`` grid, over its ``kernel_att**2`` window of the reflect-padded
    keys (iterated reflection on maps smaller than the padding) with the
    relative position term; the convolution path mixes the ``3 * heads`` pieces
    with ``fc`` and sums their shifts with the group convolution; the output is
    ``rate_att * attention + rate_conv * convolution`` (or one path alone).
    Every backend computes exactly this (``docs/fast-paths.md``).

    Raises:
        ValueError: naming the bad value (input type, dtype, device, shape,
            weight shapes, dtypes and devices, or a backend that cannot run this input).
        TypeError: ``weights`` or ``config`` of another type.
    """
    if not isinstance(weights, ACmixWeights):  # a plain tuple or dict would fail on a missing attribute
        raise TypeError(f"weights must be an ACmixWeights (layer.weights()), got {type(weights).__name__}")
    if not isinstance(config, ACmixConfig):
        raise TypeError(f"config must be an ACmixConfig (layer.config), got {type(config).__name__}")
    check_weights(weights, config)
    check_input(x, config, weights)
    chosen = resolve_backend(x, config, backend, weights)
    if chosen is Backend.REFERENCE:
        return acmix_reference(x, weights, config)
    return acmix_fast(x, weights, config, chosen)


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
