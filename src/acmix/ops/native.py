"""The compiled CPU kernel for ACmix's local attention, built on first use.

``csrc/local_attention.cpp`` holds a forward and a hand-written backward (SPEC
section 2: window offset outer, pixel x inner, so the loops vectorise; the
softmax ``P`` is saved, ``k^2`` values per pixel and head).  It is compiled
with the machine's C++ compiler through ``torch.utils.cpp_extension`` the
first time it is needed (tens of seconds, cached on disk afterwards) and
registered as the custom op ``acmix::local_attention`` so that autograd,
``torch.compile`` and FakeTensor tracing see one opaque op.  Where no compiler
is available, :func:`available` is False and the dispatcher uses the eager path.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "build_seconds", "local_attention"]

_SOURCE = Path(__file__).with_name("csrc") / "local_attention.cpp"
_lock = threading.Lock()
_module = None
_failed: str | None = None
_build_seconds: float | None = None


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def _load():
    global _module, _failed, _build_seconds
    with _lock:
        if _module is not None or _failed is not None:
            return _module
        if os.environ.get("ACMIX_DISABLE_NATIVE") == "1":
            _failed = "disabled by ACMIX_DISABLE_NATIVE=1"
            return None
        if _compiler() is None:
            _failed = "no C++ compiler found"
            return None
        start = time.perf_counter()
        try:
            from torch.utils.cpp_extension import load

            flags = ["-O3", "-ffast-math", "-fopenmp"]
            if os.environ.get("ACMIX_NATIVE_MARCH", "native"):
                flags.append(f"-march={os.environ.get('ACMIX_NATIVE_MARCH', 'native')}")
            _module = load(name="acmix_local_attention_cpu", sources=[str(_SOURCE)], extra_cflags=flags,
                           extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # a broken toolchain must not break the layer
            _failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"acmix: compiled CPU kernel unavailable, using the eager path ({_failed})",
                          RuntimeWarning, stacklevel=3)
            return None
        _build_seconds = time.perf_counter() - start
        return _module


def available() -> bool:
    """Whether the compiled CPU kernel can be used (builds it on the first call)."""
    return _load() is not None


def build_seconds() -> float | None:
    """Seconds the first load took in this process (compile or cache hit), None if not loaded."""
    return _build_seconds


@functools.lru_cache(maxsize=256)
def _geometry(h: int, w: int, pad: int, device: torch.device, dtype: torch.dtype):
    from .common import reflect_index

    rh = reflect_index(h, pad, device=device)
    rw = reflect_index(w, pad, device=device)
    lx = torch.arange(w, device=device, dtype=dtype) * (2.0 / max(w - 1, 1)) - 1.0
    ly = torch.arange(h, device=device, dtype=dtype) * (2.0 / max(h - 1, 1)) - 1.0
    return rh, rw, lx, ly


@torch.library.custom_op("acmix::local_attention", mutates_args=())
def _local_attention(q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, scale: float, kernel: int, stride: int,
                     dilation: int) -> tuple[Tensor, Tensor]:
    pad = dilation * (kernel - 1) // 2
    rh, rw, lx, ly = _geometry(k.shape[-2], k.shape[-1], pad, k.device, k.dtype)
    out, p = _load().local_attention_forward(q, r, k, v, rh, rw, lx, ly, scale, kernel, stride, dilation)
    return out, p


@_local_attention.register_fake
def _(q, r, k, v, scale, kernel, stride, dilation):
    b, heads, hd, ho, wo = q.shape
    return q.new_empty(b, heads * hd, ho, wo), q.new_empty(b * heads, kernel * kernel, ho, wo)


@torch.library.custom_op("acmix::local_attention_backward", mutates_args=())
def _local_attention_backward(gout: Tensor, out: Tensor, p: Tensor, q: Tensor, r: Tensor | None, k: Tensor,
                              v: Tensor, scale: float, kernel: int, stride: int,
                              dilation: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    pad = dilation * (kernel - 1) // 2
    rh, rw, lx, ly = _geometry(k.shape[-2], k.shape[-1], pad, k.device, k.dtype)
    gq, gr, gk, gv = _load().local_attention_backward(gout, out, p, q, r, k, v, rh, rw, lx, ly, scale, kernel,
                                                      stride, dilation)
    if gr is None:
        gr = q.new_empty(0)
    return gq, gr, gk, gv


@_local_attention_backward.register_fake
def _(gout, out, p, q, r, k, v, scale, kernel, stride, dilation):
    gr = torch.empty_like(r) if r is not None else q.new_empty(0)
    return torch.empty_like(q), gr, k.new_empty(k.shape), v.new_empty(v.shape)


def _setup(ctx, inputs, output):
    q, r, k, v, scale, kernel, stride, dilation = inputs
    out, p = output
    ctx.save_for_backward(q, r, k, v, out, p)
    ctx.args = (scale, kernel, stride, dilation)


def _backward(ctx, gout, gp):
    q, r, k, v, out, p = ctx.saved_tensors
    gq, gr, gk, gv = _local_attention_backward(gout, out, p, q, r, k, v, *ctx.args)
    return gq, (gr if r is not None else None), gk, gv, None, None, None, None


_local_attention.register_autograd(_backward, setup_context=_setup)


def local_attention(q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, *, scale: float, kernel: int,
                    stride: int, dilation: int) -> Tensor:
    """Window attention of ACmix on the compiled kernel.

    ``q`` is the strided query map ``(B, heads, hd, Ho, Wo)``, ``r = W_p^T (scale q)``
    the position term ``(B, heads, 2, Ho, Wo)`` or None, ``k``/``v`` are
    ``(B, heads, hd, H, W)`` views with contiguous rows.  Returns ``(B, heads*hd, Ho, Wo)``.
    """
    if _load() is None:
        raise RuntimeError(f"acmix: the compiled CPU kernel is unavailable ({_failed})")
    if r is not None:
        r = r.contiguous()
    return _local_attention(q.contiguous(), r, k, v, float(scale), kernel, stride, dilation)[0]
