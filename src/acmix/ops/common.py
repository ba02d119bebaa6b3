"""Pieces shared by the reference and the fast paths: weights, grids, checks."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .config import ACmixConfig, ShiftMode

__all__ = [
    "ACmixWeights",
    "blend",
    "check_input",
    "check_weights",
    "data_dependent_ok",
    "mix",
    "packed",
    "position_grid",
    "reflect_index",
    "reflect_pad",
    "reflect_positions",
    "required",
    "shift_kernel",
    "static_sizes",
    "tensor_if_symbolic",
]


class ACmixWeights(NamedTuple):
    """The tensors of one ACmix layer, in the authors' layout.

    ``q/k/v_weight`` are ``(C_out, C_in, 1, 1)`` (the authors' ``conv1..3``);
    ``pe_weight`` ``(head_dim, 2, 1, 1)`` (``conv_p``, ``None`` without position
    encoding); ``fc_weight`` ``(k_conv**2, 3 * heads, 1, 1)``; ``conv_weight``
    ``(C_out, k_conv**2, k_conv, k_conv)`` for the grouped shift mode,
    ``(head_dim, k_conv**2, k_conv, k_conv)`` for the fixed and learnable modes
    and ``None`` for tensor shifts; ``rate_att``/``rate_conv`` are ``(1,)``.
    """

    q_weight: Tensor
    q_bias: Tensor | None
    k_weight: Tensor
    k_bias: Tensor | None
    v_weight: Tensor
    v_bias: Tensor | None
    pe_weight: Tensor | None = None
    pe_bias: Tensor | None = None
    fc_weight: Tensor | None = None
    conv_weight: Tensor | None = None
    conv_bias: Tensor | None = None
    rate_att: Tensor | None = None
    rate_conv: Tensor | None = None


def data_dependent_ok() -> bool:
    """False inside ``torch.compile``, export, jit tracing/scripting and ``torch.func`` transforms.

    There, Python control flow on tensor values (``if t.any():``) is refused or
    baked into the graph, so code must take its value-independent branch.
    """
    transforms = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)()
    return not (torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
                or torch.jit.is_scripting() or bool(transforms))


def position_grid(height: int, width: int, *, device: torch.device | None = None,
                  dtype: torch.dtype | None = None) -> Tensor:
    """The 2-channel location map ``(1, 2, H, W)``: channel 0 is x, channel 1 is y.

    Both run evenly from -1 to 1 (a single row or column sits at -1, as
    ``linspace(-1, 1, 1)`` does).  Built with ``arange`` rather than
    ``linspace`` so that an exported graph keeps H and W symbolic.
    """
    def axis(n: int) -> Tensor:
        step = 2.0 / _size_max(n - 1, 1)
        return torch.arange(n, device=device, dtype=dtype) * step - 1.0

    xs = axis(width).view(1, width).expand(height, width)
    ys = axis(height).view(height, 1).expand(height, width)
    return torch.stack([xs, ys]).unsqueeze(0)


def reflect_index(size: int, pad: int, *, device: torch.device | None = None) -> Tensor:
    """Source index of every position of a ``size + 2 * pad`` reflect-padded axis.

    Where ``pad < size`` this is exactly ``ReflectionPad``.  Where the map is too
    small for that, the reflection is iterated (the axis is mirrored back and
    forth with period ``2 * (size - 1)``), and a single-pixel axis repeats its
    pixel.  This is the layer's defined semantics for tiny feature maps.
    """
    return reflect_positions(torch.arange(-pad, size + pad, device=device), size)


def reflect_positions(pos: Tensor, size: int) -> Tensor:
    """:func:`reflect_index`'s rule for any integer positions ``pos`` on an axis of ``size`` pixels.

    Branch-free in ``size`` (the period is at least 1, which maps a single-pixel
    axis to pixel 0), so an exported graph keeps ``size`` symbolic.
    """
    period = tensor_if_symbolic(_size_max(2 * (size - 1), 1), pos)
    pos = pos.remainder(period)
    return torch.where(pos >= size, period - pos, pos)


def reflect_pad(t: Tensor, pad: int) -> Tensor:
    """Reflect-pad the last two axes by ``pad`` (iterated reflection on tiny maps, see :func:`reflect_index`)."""
    ih = reflect_index(t.shape[-2], pad, device=t.device)
    iw = reflect_index(t.shape[-1], pad, device=t.device)
    return t.index_select(-2, ih).index_select(-1, iw)


def static_sizes(*sizes: int) -> bool:
    """Whether ``sizes`` are plain ints outside a compiler's trace, so that a Python branch on them is free.

    Otherwise (``torch.export``, ``torch.compile``; dynamo can show symbolic sizes as ints) a branch
    becomes a guard and the traced graph keeps only the example's side: callers then take the form that
    is exact at every size (the tiled attention, an always-run pad or resize, a copy), and ``lru_cache``d
    helpers never see a ``SymInt``.
    """
    return not torch.compiler.is_compiling() and all(type(s) is int for s in sizes)


def packed(x: Tensor) -> Tensor:
    """A contiguous copy of ``x``, always.

    ``x.contiguous()`` first asks whether ``x`` already is, and for a permuted view the
    answer depends on which axes have size 1 (one window along an axis, a batch of one).
    At symbolic sizes that question is a guard, and the traced program keeps only the
    example's answer (an export with one Swin window per axis in the last stage refused
    every size with more).  No extra cost where ``.contiguous()`` copies anyway.
    """
    return x.clone(memory_format=torch.contiguous_format)


def tensor_if_symbolic(value: int, like: Tensor) -> int:
    """``value``, or a 0-d tensor of it (``like``'s dtype and device) when it is a ``SymInt``: ONNX
    converters take no symbolic Python scalar in elementwise integer ops (``%``, ``//``)."""
    if isinstance(value, torch.SymInt):
        return torch.full((), value, dtype=like.dtype, device=like.device)
    return value


def _size_max(a: int, b: int) -> int:
    """``max`` of sizes; ``torch.sym_max`` for symbolic sizes, so that no guard is recorded."""
    return torch.sym_max(a, b) if isinstance(a, torch.SymInt) else max(a, b)


def shift_kernel(kernel: int, *, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> Tensor:
    """The ``(k*k, k, k)`` one-hot kernels: kernel ``t`` picks offset ``(t // k, t % k)``."""
    eye = torch.eye(kernel * kernel, device=device, dtype=dtype)
    return eye.view(kernel * kernel, kernel, kernel)


def check_input(x: Tensor, cfg: ACmixConfig, w: ACmixWeights | None = None) -> None:
    """One-line ``ValueError`` naming what is wrong with the input (and its match with the weights ``w``)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__module__}.{type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != cfg.in_channels:
        raise ValueError(
            f"x has {x.shape[1]} channels, the layer expects in_channels={cfg.in_channels}"
        )
    if x.shape[2] == 0 or x.shape[3] == 0:  # an empty batch is fine, as for nn.Conv2d
        raise ValueError(f"x must have a non-empty height and width, got shape {tuple(x.shape)}")
    if w is None:
        return
    if x.device != w.q_weight.device:
        raise ValueError(f"x is on {x.device} but the layer's weights are on {w.q_weight.device}")
    castable = (torch.float32, torch.float16, torch.bfloat16)  # what autocast converts (never float64)
    autocast = (x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)
                and x.dtype in castable and w.q_weight.dtype in castable)
    if x.dtype != w.q_weight.dtype and not autocast:
        raise ValueError(f"x has dtype {x.dtype} but the layer's weights are {w.q_weight.dtype}: convert one "
                         f"of them (x.to({w.q_weight.dtype}) or layer.to({x.dtype})), or run under autocast")


def required(t: Tensor | None, name: str) -> Tensor:
    """``t``, a weight that the configuration needs (so ``check_weights`` has seen it); ``ValueError`` if None."""
    if t is None:
        raise ValueError(f"{name} is required by this configuration")
    return t


def mix(rate_att: Tensor, rate_conv: Tensor, att: Tensor, conv: Tensor) -> Tensor:
    """``rate_att * att + rate_conv * conv`` in the paths' dtype (docs/operator.md, "Autocast"): under
    autocast the float32 rates would otherwise promote a bf16/fp16 layer's output to float32."""
    return (rate_att * att + rate_conv * conv).to(torch.promote_types(att.dtype, conv.dtype))


def blend(w: ACmixWeights, att: Tensor, conv: Tensor) -> Tensor:
    """Stage II when both paths run: :func:`mix` with the layer's rates."""
    return mix(required(w.rate_att, "rate_att"), required(w.rate_conv, "rate_conv"), att, conv)


def _shape(t: Tensor | None, want: tuple[int, ...], name: str) -> None:
    shape = tuple(required(t, name).shape)
    if shape != want:
        raise ValueError(f"{name} has shape {shape}, expected {want}")


def _same_kind(w: ACmixWeights) -> None:
    """Every weight a tensor on ``q_weight``'s device in its dtype: a float64 ``k_weight`` in a float32
    layer otherwise fails deep in a conv, and a meta ``conv_weight`` is read as garbage by the CPU kernel."""
    first = w.q_weight
    dtype, device = first.dtype, first.device  # read once: this runs on every call of every layer
    for name, t in zip(w._fields, w):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor or None, got {type(t).__module__}.{type(t).__name__}")
        if t.dtype != dtype or t.device != device:
            raise ValueError(f"{name} is {t.dtype} on {t.device} but q_weight is {first.dtype} on {first.device}: "
                             f"every weight shares one dtype and device")


def check_weights(w: ACmixWeights, cfg: ACmixConfig) -> None:
    """Shape, dtype and device checks, so that a wrong tensor fails here and not deep in torch."""
    if not isinstance(w.q_weight, Tensor):
        raise ValueError(f"q_weight must be a torch.Tensor, got {type(w.q_weight).__module__}."
                         f"{type(w.q_weight).__name__}")
    _same_kind(w)
    co, ci, hd, kc = cfg.out_channels, cfg.in_channels, cfg.head_dim, cfg.kernel_conv
    for name in ("q", "k", "v"):
        _shape(getattr(w, f"{name}_weight"), (co, ci, 1, 1), f"{name}_weight")
        bias = getattr(w, f"{name}_bias")
        if bias is not None:
            _shape(bias, (co,), f"{name}_bias")
    if cfg.has_attention and cfg.position_encoding:
        _shape(w.pe_weight, (hd, 2, 1, 1), "pe_weight")
        if w.pe_bias is not None:
            _shape(w.pe_bias, (hd,), "pe_bias")
    if cfg.has_conv:
        _shape(w.fc_weight, (kc * kc, 3 * cfg.heads, 1, 1), "fc_weight")
        if cfg.shift is ShiftMode.GROUPED:
            _shape(w.conv_weight, (co, kc * kc, kc, kc), "conv_weight")
        elif cfg.shift is not ShiftMode.TENSOR:
            _shape(w.conv_weight, (hd, kc * kc, kc, kc), "conv_weight")
        if w.conv_bias is not None:
            _shape(w.conv_bias, (co,), "conv_bias")
    if cfg.has_attention and cfg.has_conv:
        _shape(w.rate_att, (1,), "rate_att")
        _shape(w.rate_conv, (1,), "rate_conv")
