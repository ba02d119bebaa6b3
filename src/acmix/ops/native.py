"""The compiled CPU kernel for ACmix's Stage II, built on first use.

``csrc/stage2.cpp`` holds a forward and a hand-written backward of both paths
fused into one output (docs/fast-paths.md: window or kernel offset outer, pixel x
inner, so the loops vectorise; the softmax is recomputed in the backward
instead of stored, so only the Stage-I map is kept for it).  It is compiled
with the machine's C++ compiler through ``torch.utils.cpp_extension`` the
first time it is needed (tens of seconds, cached on disk afterwards) and
registered as the custom op ``acmix::stage2`` so that autograd,
``torch.compile`` and FakeTensor tracing see one opaque op.  Where no compiler
is available, :func:`available` is False and the dispatcher uses the eager path.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["available", "fits", "stage2"]

_SOURCE = Path(__file__).with_name("csrc") / "stage2.cpp"
_lock = threading.Lock()
_module = None
_failed: str | None = None


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


@torch.compiler.disable
def _load():
    global _module, _failed
    with _lock:
        if _module is not None or _failed is not None:
            return _module
        if os.environ.get("ACMIX_DISABLE_NATIVE") == "1":
            _failed = "disabled by ACMIX_DISABLE_NATIVE=1"
            return None
        if _compiler() is None:
            _failed = "no C++ compiler found"
            return None
        if shutil.which("ninja") is None:  # the PyPI ninja package, when the venv is not activated
            try:
                import ninja

                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
            except ImportError:
                pass
        try:
            from torch.utils.cpp_extension import load

            flags = ["-O3", "-ffast-math", "-fopenmp"]
            march = os.environ.get("ACMIX_NATIVE_MARCH", "native")  # empty: the compiler's default target
            if march:
                flags.append(f"-march={march}")
            _module = load(name="acmix_stage2_cpu", sources=[str(_SOURCE)], extra_cflags=flags,
                           extra_ldflags=["-fopenmp"], verbose=False)
        except Exception as exc:  # a broken toolchain must not break the layer
            _failed = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"acmix: compiled CPU kernel unavailable, using the eager path ({_failed})",
                          RuntimeWarning, stacklevel=3)
            return None
        return _module


def available() -> bool:
    """Whether the compiled CPU kernel can be used (builds it on the first call)."""
    if _module is not None:  # lock-free once decided, so torch.compile traces straight through
        return True
    if _failed is not None or torch.compiler.is_compiling():
        return False  # not built before tracing: the traced graph takes the eager path
    return _load() is not None


def fits(x: Tensor) -> bool:
    """Whether the kernel can run this input: float32/float64 on the CPU, not under autocast."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu"))



@functools.lru_cache(maxsize=256)
def _geometry(h: int, w: int, pad: int, device: torch.device, dtype: torch.dtype):
    from .common import reflect_index

    rh = reflect_index(h, pad, device=device)
    rw = reflect_index(w, pad, device=device)
    lx = torch.arange(w, device=device, dtype=dtype) * (2.0 / max(w - 1, 1)) - 1.0
    ly = torch.arange(h, device=device, dtype=dtype) * (2.0 / max(h - 1, 1)) - 1.0
    return rh, rw, lx[rw].contiguous(), ly


@torch.library.custom_op("acmix::stage2", mutates_args=())
def _stage2(qkv: Tensor, wp: Tensor | None, wc: Tensor | None, bias: Tensor | None, rate1: Tensor, rate2: Tensor,
            heads: int, has_att: bool, kernel_att: int, kernel_conv: int, stride: int, dilation: int) -> Tensor:
    geo = _geometry(qkv.shape[-2], qkv.shape[-1], dilation * (kernel_att - 1) // 2, qkv.device, qkv.dtype)
    return _load().stage2_forward(qkv, wp, wc, bias, rate1.item(), rate2.item(), *geo, heads, has_att, kernel_att,
                                  kernel_conv, stride, dilation, _scale(qkv, heads))


@_stage2.register_fake
def _(qkv, wp, wc, bias, rate1, rate2, heads, has_att, kernel_att, kernel_conv, stride, dilation):
    b, c3, h, w = qkv.shape
    return qkv.new_empty(b, c3 // 3, (h - 1) // stride + 1, (w - 1) // stride + 1)


@torch.library.custom_op("acmix::stage2_backward", mutates_args=())
def _stage2_backward(gout: Tensor, qkv: Tensor, wp: Tensor | None, wc: Tensor | None, bias: Tensor | None,
                     rate1: Tensor, rate2: Tensor, heads: int, has_att: bool, kernel_att: int, kernel_conv: int,
                     stride: int, dilation: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    geo = _geometry(qkv.shape[-2], qkv.shape[-1], dilation * (kernel_att - 1) // 2, qkv.device, qkv.dtype)
    grads = _load().stage2_backward(gout, qkv, wp, wc, bias, rate1.item(), rate2.item(), *geo, heads, has_att,
                                    kernel_att, kernel_conv, stride, dilation, _scale(qkv, heads))
    return tuple(g if g is not None else qkv.new_empty(0) for g in grads)


@_stage2_backward.register_fake
def _(gout, qkv, wp, wc, bias, rate1, rate2, heads, has_att, kernel_att, kernel_conv, stride, dilation):
    def like(t):
        return torch.empty_like(t) if t is not None else qkv.new_empty(0)

    return torch.empty_like(qkv), like(wp), like(wc), like(bias), rate1.new_empty(1), rate2.new_empty(1)


def _scale(qkv: Tensor, heads: int) -> float:
    return float((qkv.shape[1] // 3 // heads) ** -0.5)


def _setup(ctx, inputs, output):
    qkv, wp, wc, bias, rate1, rate2, *args = inputs
    ctx.save_for_backward(qkv, wp, wc, bias, rate1, rate2)
    ctx.args = args


def _backward(ctx, gout):
    qkv, wp, wc, bias, rate1, rate2 = ctx.saved_tensors
    gqkv, gwp, gwc, gbias, g1, g2 = _stage2_backward(gout, qkv, wp, wc, bias, rate1, rate2, *ctx.args)
    present = (wp is not None, wc is not None, bias is not None)
    gwp, gwc, gbias = (g if p else None for g, p in zip((gwp, gwc, gbias), present))
    return gqkv, gwp, gwc, gbias, g1, g2, None, None, None, None, None, None


_stage2.register_autograd(_backward, setup_context=_setup)


def stage2(qkv: Tensor, *, heads: int, pe_weight: Tensor | None, conv_weight: Tensor | None,
           conv_bias: Tensor | None, rate_att: Tensor, rate_conv: Tensor, has_attention: bool, kernel_att: int,
           kernel_conv: int, stride: int, dilation: int) -> Tensor:
    """ACmix Stage II on the compiled kernel: ``rate_att * att + rate_conv * (conv + bias)``.

    ``qkv`` is the Stage-I map ``(B, 3C, H, W)``, channels ``[q, k, v]`` with heads contiguous;
    ``pe_weight`` ``(head_dim, 2)`` or None; ``conv_weight`` the folded group-conv kernel
    ``(C, 3*heads, k, k)`` or None for attention only.
    """
    if not available():
        raise RuntimeError(f"acmix: the compiled CPU kernel is unavailable ({_failed})")
    return _stage2(qkv.contiguous(), pe_weight, conv_weight, conv_bias, rate_att, rate_conv, heads, has_attention,
                   kernel_att, kernel_conv, stride, dilation)
