"""The compiled CPU kernel for ACmix's Stage II, built on first use.

``csrc/stage2.cpp`` holds a forward and a hand-written backward of both paths
fused into one output (window or kernel offset outer, pixel x inner, so the
loops vectorise; the softmax is recomputed in the backward instead of stored,
so only the Stage-I map is kept for it; ``docs/fast-paths.md``).  It is
compiled with the machine's C++ compiler through ``torch.utils.cpp_extension``
the first time it is needed (tens of seconds) and registered as the custom op
``acmix::stage2`` so that autograd, ``torch.compile`` and FakeTensor tracing
see one opaque op.  Where no compiler is available, :func:`available` is False
and the dispatcher uses the eager path.

The build cache.  The binary lands in ``$TORCH_EXTENSIONS_DIR/<name>/`` (torch's
default when unset: ``~/.cache/torch_extensions/py3X_cpu/<name>/``).  ``<name>``
is ``acmix_stage2_<isa>_<hash>``, the hash taken over the source, the flags, the
torch and Python versions and the compiler, so checkouts, virtualenvs and
machines sharing one cache never rebuild each other's kernel and never load a
binary built for another CPU.  ``acmix build-kernel`` builds it ahead of time
(e.g. on each kind of node of an offline cluster, into a shared
``TORCH_EXTENSIONS_DIR``) and prints its path.

The instruction set.  No ``-march=native``: the target is the x86-64
micro-architecture level the running CPU supports, as PyTorch's own runtime
dispatch reports it (``torch.backends.cpu.get_cpu_capability()``: AVX512 ->
``x86-64-v4``, AVX2 -> ``x86-64-v3``, otherwise the baseline ``x86-64``; the
compiler's default target on other architectures), and it is part of the name,
so a cache shared by mixed CPUs holds one binary per level.  Environment:
``ACMIX_NATIVE_MARCH=<arch>`` passes ``-march=<arch>`` instead (empty: the
compiler's default target; ``native``: this kind of CPU only, its feature
flags then enter the hash), ``ATEN_CPU_CAPABILITY`` lowers PyTorch's (and so
this) level, ``ACMIX_DISABLE_NATIVE=1`` turns the kernel off.  No ``-ffast-math``: NaN and
Inf propagate as in the reference (the softmax's exp is still vectorised, with
glibc's vector ``exp`` declared in the source).

Second derivatives.  The op's backward is the kernel's, except under
``create_graph=True`` (gradient penalties, ``gradgradcheck``), where it is the
eager Stage II (:func:`stage2_eager`) differentiated by autograd, so its graph
can be differentiated again.  Under ``torch.func`` transforms and forward-mode
AD, :func:`fits` is False and the dispatcher takes the eager path.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BuildConfig", "available", "build", "build_config", "fits", "stage2", "stage2_eager"]

_SOURCE = Path(__file__).with_name("csrc") / "stage2.cpp"
_BASE_FLAGS = ("-O3", "-fopenmp", "-fno-math-errno")  # -fno-math-errno keeps IEEE NaN/Inf semantics
_LDFLAGS = ("-fopenmp",)
_X86_LEVELS = {"AVX512": "x86-64-v4", "AVX2": "x86-64-v3"}  # torch's capability -> -march level
_lock = threading.Lock()
_module = None
_config: BuildConfig | None = None
_failed: str | None = None


@dataclass(frozen=True)
class BuildConfig:
    """How the kernel is built: ``name`` (the cache directory) keys everything else."""

    name: str
    isa: str  # the -march target, or "default" for the compiler's default target
    flags: tuple[str, ...]
    compiler: str


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


@functools.lru_cache(maxsize=8)
def _compiler_version(path: str) -> str:
    try:
        run = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60, check=False)
        return run.stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__})"


def _target() -> str | None:
    """The ``-march`` value: the override, else the x86-64 level PyTorch dispatches to (None: the default)."""
    override = os.environ.get("ACMIX_NATIVE_MARCH")
    if override is not None:
        return override.strip() or None
    if platform.machine().lower() in ("x86_64", "amd64"):
        return _X86_LEVELS.get(torch.backends.cpu.get_cpu_capability(), "x86-64")
    return None


def _cpu_flags() -> str:
    """The CPU's feature list (Linux), which ``-march=native`` builds depend on."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line for line in lines if line.startswith(("flags", "Features"))), platform.processor())


def build_config() -> BuildConfig:
    """The flags and the cache name a build in this process uses (needs a compiler: see :func:`available`)."""
    compiler = _compiler() or ""
    march = _target()
    flags = (*_BASE_FLAGS, *((f"-march={march}",) if march else ()))
    isa = march or "default"
    key = "\n".join([_SOURCE.read_text(), " ".join(flags), " ".join(_LDFLAGS), torch.__version__, sys.version,
                     platform.machine(), compiler, _compiler_version(compiler) if compiler else "",
                     _cpu_flags() if march == "native" else ""])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return BuildConfig(f"acmix_stage2_{re.sub(r'[^0-9A-Za-z]', '_', isa)}_{digest}", isa, flags, compiler)


def _ensure_ninja() -> None:
    if shutil.which("ninja") is None:  # the PyPI ninja package, when the venv is not activated
        try:
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass


def _reason(exc: Exception) -> str:
    """One line saying why the build failed: the compiler's first error, else the message's first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return f"{type(exc).__name__}: {(errors or lines or ['(no message)'])[0]}"[:400]


@torch.compiler.disable  # type: ignore[untyped-decorator]  # torch leaves it unannotated
def _load(verbose: bool = False) -> Any:
    """The compiled extension module (built or loaded on the first call), or None when it cannot be had."""
    global _module, _config, _failed
    with _lock:
        if _module is not None or _failed is not None:
            return _module
        if os.environ.get("ACMIX_DISABLE_NATIVE") == "1":
            _failed = "disabled by ACMIX_DISABLE_NATIVE=1"
            return None
        if _compiler() is None:
            _failed = "no C++ compiler found (set CXX, or install g++ or clang++)"
            return None
        _ensure_ninja()
        try:
            from torch.utils.cpp_extension import load

            _config = cfg = build_config()
            _module = load(name=cfg.name, sources=[str(_SOURCE)], extra_cflags=list(cfg.flags),
                           extra_ldflags=list(_LDFLAGS), verbose=verbose)
        except Exception as exc:  # a broken toolchain must not break the layer
            _failed = _reason(exc)
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


def build(*, verbose: bool = False) -> tuple[BuildConfig, Path]:
    """Build the kernel (or load it from the cache): its config and the shared library's path.

    Raises ``RuntimeError`` with a one-line reason when it cannot be built.
    """
    if _module is None and _failed is None:
        _load(verbose)
    if _module is None or _config is None:  # both are set together
        raise RuntimeError(f"the compiled CPU kernel is unavailable: {_failed}")
    return _config, Path(_module.__file__)


def _transformed() -> bool:
    """Inside ``torch.func`` transforms or forward-mode AD, which the op has no rules for."""
    functorch = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)()
    return bool(functorch) or getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def fits(x: Tensor) -> bool:
    """Whether the kernel can run this input: float32/float64 on the CPU, not under autocast or transforms."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and not _transformed())


@functools.lru_cache(maxsize=256)
def _geometry(h: int, w: int, pad: int, device: torch.device,
              dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
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
    out: Tensor = _load().stage2_forward(qkv, wp, wc, bias, rate1.item(), rate2.item(), *geo, heads, has_att,
                                         kernel_att, kernel_conv, stride, dilation, _scale(qkv, heads))
    return out


@_stage2.register_fake
def _(qkv: Tensor, wp: Tensor | None, wc: Tensor | None, bias: Tensor | None, rate1: Tensor, rate2: Tensor,
      heads: int, has_att: bool, kernel_att: int, kernel_conv: int, stride: int, dilation: int) -> Tensor:
    b, c3, h, w = qkv.shape
    return qkv.new_empty(b, c3 // 3, (h - 1) // stride + 1, (w - 1) // stride + 1)


@torch.library.custom_op("acmix::stage2_backward", mutates_args=())
def _stage2_backward(gout: Tensor, qkv: Tensor, wp: Tensor | None, wc: Tensor | None, bias: Tensor | None,
                     rate1: Tensor, rate2: Tensor, heads: int, has_att: bool, kernel_att: int, kernel_conv: int,
                     stride: int, dilation: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    geo = _geometry(qkv.shape[-2], qkv.shape[-1], dilation * (kernel_att - 1) // 2, qkv.device, qkv.dtype)
    grads = _load().stage2_backward(gout, qkv, wp, wc, bias, rate1.item(), rate2.item(), *geo, heads, has_att,
                                    kernel_att, kernel_conv, stride, dilation, _scale(qkv, heads))
    gqkv, gwp, gwc, gbias, g1, g2 = (g if g is not None else qkv.new_empty(0) for g in grads)
    return gqkv, gwp, gwc, gbias, g1, g2


@_stage2_backward.register_fake
def _(gout: Tensor, qkv: Tensor, wp: Tensor | None, wc: Tensor | None, bias: Tensor | None, rate1: Tensor,
      rate2: Tensor, heads: int, has_att: bool, kernel_att: int, kernel_conv: int, stride: int,
      dilation: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    def like(t: Tensor | None) -> Tensor:
        return torch.empty_like(t) if t is not None else qkv.new_empty(0)

    return torch.empty_like(qkv), like(wp), like(wc), like(bias), rate1.new_empty(1), rate2.new_empty(1)


def _scale(qkv: Tensor, heads: int) -> float:
    return float((qkv.shape[1] // 3 // heads) ** -0.5)


def stage2_eager(qkv: Tensor, wp: Tensor | None, wc: Tensor | None, bias: Tensor | None, rate1: Tensor,
                 rate2: Tensor, heads: int, has_att: bool, kernel_att: int, kernel_conv: int, stride: int,
                 dilation: int) -> Tensor:
    """What ``acmix::stage2`` computes, in plain differentiable torch ops (the eager path's attention).

    ``rate1 * att + rate2 * (conv(qkv; wc) + bias)``, a term dropped where
    ``has_att`` is False or ``wc`` is None; the op's backward differentiates
    this under ``create_graph=True``.
    """
    from .fast import attention_eager, position_term  # fast imports this module

    b, c3, h, w = qkv.shape
    hd = c3 // 3 // heads
    out = None
    if has_att:
        q, k, v = qkv.view(b, 3, heads, hd, h, w).unbind(1)
        qs = q[..., ::stride, ::stride]
        scale = _scale(qkv, heads)
        r = None if wp is None else position_term(qs, wp, scale)
        out = rate1 * attention_eager(qs, r, k, v, scale=scale, kernel=kernel_att, stride=stride,
                                      dilation=dilation)
    if wc is not None:  # group d reads channel which*C + head*hd + d of every piece which*heads + head
        pieces = qkv.view(b, 3 * heads, hd, h, w).transpose(1, 2).reshape(b, c3, h, w)
        conv = rate2 * F.conv2d(pieces, wc, bias, stride=stride, padding=kernel_conv // 2, groups=hd)
        out = conv if out is None else out + conv
    assert out is not None  # the op always has a path (has_att, or wc given)
    return out


def _setup(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    qkv, wp, wc, bias, rate1, rate2, *args = inputs
    ctx.save_for_backward(qkv, wp, wc, bias, rate1, rate2)
    ctx.args = args


def _backward(ctx: Any, gout: Tensor) -> tuple[Tensor | None, ...]:
    saved = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a backward autograd can differentiate again
        wanted = [t for t in saved if t is not None and t.requires_grad]
        grads = iter(torch.autograd.grad(stage2_eager(*saved, *ctx.args), wanted, gout, create_graph=True,
                                         allow_unused=True))
        result = [next(grads) if t is not None and t.requires_grad else None for t in saved]
        return *result, None, None, None, None, None, None
    qkv, wp, wc, bias, rate1, rate2 = saved
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
    out: Tensor = _stage2(qkv.contiguous(), pe_weight, conv_weight, conv_bias, rate_att, rate_conv, heads,
                          has_attention, kernel_att, kernel_conv, stride, dilation)
    return out
