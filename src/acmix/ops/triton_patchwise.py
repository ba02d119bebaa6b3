"""SAN's patchwise aggregation (:mod:`acmix.ops.patchwise`) in Triton kernels, forward and backward.

Semantics are exactly those of :func:`acmix.ops.patchwise.patchwise_aggregation_reference`
(``docs/models.md``, SAN): ``out[b, c, i] = sum_j weight[b, c % Cw, j, i] * v[b, c, window_j(i)]``
with reflect padding (iterated on tiny maps), stride and dilation.  Why each
kernel is exact and how the dispatcher picks it: ``docs/fast-paths.md``.

Three launches of two kernels, none with atomics, so every result is deterministic:

* **forward** (``_window_kernel``, ``GRAD_WEIGHT=False``): one program per
  (batch, channel block, tile of output pixels).  For each of the ``k*k``
  window positions it computes the reflected source row and column of every
  pixel of the tile from integers (``q mod 2(n-1)``, mirrored; a one-pixel axis
  repeats its pixel), gathers ``v`` through its strides and accumulates
  ``weight * v`` in float32 (float64 for float64 inputs).  No padded copy of
  ``v``, no unfold.  A block's channels are ordered so that the ``C / Cw``
  channels sharing a weight map sit together: every weight map (the largest
  input, ``k*k / share`` times ``v``) is read from memory by one program.
* **weight gradient** (the same kernel, ``GRAD_WEIGHT=True``): one program per
  (batch, weight-channel block, output tile); for each window position it sums
  ``grad_out[b, c, i] * v[b, c, window_j(i)]`` over the ``share = C / Cw``
  channels ``c = s * Cw + cw`` inside the program (the share group is reduced
  in registers, not with atomics) and stores ``d_weight[b, cw, j, i]`` once.
* **value gradient** (``_value_grad_kernel``): a *gather* per source pixel.
  Reflection is separable, so for each axis the host builds (once per geometry,
  cached) the table of every (output index, kernel index) pair whose reflected
  read lands on each source index -- the reflected preimages, padded with -1
  to the longest list (about ``k`` per row at stride 1, up to ``k + pad`` next
  to a border, more on maps smaller than the padding).  One program per
  (batch, channel block, source row, tile of columns) walks the row's list
  (its exact length) times the column lists (the longest in the tile) and sums
  ``weight[b, c % Cw, j, i] * grad_out[b, c, i]`` over the valid pairs, in a
  fixed order; nothing is scattered, so nothing is folded.

All inputs are read in place through their strides (any layout, expanded
gradients too); outputs are contiguous.  :func:`patchwise_aggregation_triton`
is a ``torch.library`` custom op with a fake (meta) implementation and an
autograd formula.  CUDA tensors run compiled kernels; CPU tensors run the same
kernels under Triton's interpreter (slow, for tests), built here explicitly,
so the ``TRITON_INTERPRET`` environment variable need not be set at import.
Such interpreted kernels cannot call Triton's own ``@jit`` library functions
(``tl.zeros``, ``tl.cdiv``, ``tl.sum``, ...), which were built compiled: the
kernels use builtins only (``tl.full``, integer arithmetic).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = tl = None

from .common import reflect_index

__all__ = ["available", "patchwise_aggregation_triton"]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def available(x: Tensor) -> bool:
    """Whether the Triton path can run ``x``: Triton imports and ``x`` is a CUDA tensor
    (or a CPU tensor with ``TRITON_INTERPRET=1``) of a float dtype the kernels take."""
    if triton is None or x.dtype not in _KERNEL_DTYPES:
        return False
    return x.device.type == "cuda" or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


def _window_kernel(v_ptr, a_ptr, out_ptr, C, CW, H, W, WO, NPIX, PAD, PERIOD_H, PERIOD_W, STRIDE, DIL,
                   svb, svc, svh, svw, sab, sac, saj, sah, saw, sob, soc, soj, soh, sow,
                   K: tl.constexpr, GRAD_WEIGHT: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Forward (``a`` = weight, rows = value channels) or weight gradient (``a`` = grad_out, rows = weight channels)."""
    # grid: (batch x pixel tiles, row blocks); the batch is folded into the first dimension, the only one
    # CUDA does not cap at 65,535
    tiles = (NPIX + BLOCK_P - 1) // BLOCK_P
    b = (tl.program_id(0) // tiles).to(tl.int64)
    pix = (tl.program_id(0) % tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    rows = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < (CW if GRAD_WEIGHT else C)
    # forward rows are value channels ordered so that the C / CW channels sharing a weight map are adjacent:
    # each weight map is then read from memory by one program only
    w_row = rows if GRAD_WEIGHT else rows // (C // CW)
    v_row = rows if GRAD_WEIGHT else (rows % (C // CW)) * CW + w_row
    pix_ok = pix < NPIX
    mask = row_ok[:, None] & pix_ok[None, :]
    oh = pix // WO
    ow = pix % WO
    a_pix = oh * sah + ow * saw
    v_base = v_ptr + b * svb
    a_base = a_ptr + b * sab
    o_base = out_ptr + b * sob + (v_row[:, None] * soc + (oh * soh + ow * sow)[None, :])
    acc = tl.full((BLOCK_C, BLOCK_P), 0.0, ACC)
    for kh in range(K):
        ih = (oh * STRIDE - PAD + kh * DIL) % PERIOD_H  # reflect: mirror with period 2 (H - 1)
        ih = tl.where(ih < 0, ih + PERIOD_H, ih)
        ih = tl.where(ih >= H, PERIOD_H - ih, ih)
        for kw in range(K):
            iw = (ow * STRIDE - PAD + kw * DIL) % PERIOD_W
            iw = tl.where(iw < 0, iw + PERIOD_W, iw)
            iw = tl.where(iw >= W, PERIOD_W - iw, iw)
            v_pix = (ih * svh + iw * svw)[None, :]
            j = kh * K + kw
            if GRAD_WEIGHT:
                part = tl.full((BLOCK_C, BLOCK_P), 0.0, ACC)
                for s in range(C // CW):
                    ch = (s * CW + rows)[:, None]
                    g = tl.load(a_base + ch * sac + a_pix[None, :], mask=mask, other=0.0)
                    val = tl.load(v_base + ch * svc + v_pix, mask=mask, other=0.0)
                    part += g.to(ACC) * val.to(ACC)
                tl.store(o_base + j * soj, part.to(out_ptr.dtype.element_ty), mask=mask)
            else:
                wt = tl.load(a_base + (w_row * sac)[:, None] + j * saj + a_pix[None, :], mask=mask, other=0.0)
                val = tl.load(v_base + (v_row * svc)[:, None] + v_pix, mask=mask, other=0.0)
                acc += wt.to(ACC) * val.to(ACC)
    if not GRAD_WEIGHT:
        tl.store(o_base, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _value_grad_kernel(g_ptr, w_ptr, out_ptr, tab_h_ptr, n_h_ptr, tab_w_ptr, n_w_ptr, C, CW, H, W, X_TILES, MH, MW,
                       sgb, sgc, sgh, sgw, swb, swc, swj, swh, sww, sob, soc, soh, sow,
                       K: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """``d_v[b, c, y, x]`` for one source row ``y`` and a tile of columns: the pairs that read each pixel."""
    tile = tl.program_id(0) % (H * X_TILES)  # grid: (batch x source rows x column tiles, channel blocks)
    b = (tl.program_id(0) // (H * X_TILES)).to(tl.int64)
    y = tile // X_TILES
    x_tile = tile % X_TILES
    x = x_tile * BLOCK_P + tl.arange(0, BLOCK_P)
    rows = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    ch_ok = rows < C
    x_ok = x < W
    w_row = rows // (C // CW)  # the share copies of a weight map adjacent, as in the forward
    ch = (rows % (C // CW)) * CW + w_row
    g_base = g_ptr + b * sgb + (ch * sgc)[:, None]
    w_base = w_ptr + b * swb + (w_row * swc)[:, None]
    acc = tl.full((BLOCK_C, BLOCK_P), 0.0, ACC)
    for a in range(tl.load(n_h_ptr + y)):  # this row's preimages: exact count
        eh = tl.load(tab_h_ptr + y * MH + a)  # packed oh * K + kh
        oh = eh // K
        kh = eh % K
        for e in range(tl.load(n_w_ptr + x_tile)):  # the longest list in this column tile; -1 pads the others
            ew = tl.load(tab_w_ptr + x * MW + e, mask=x_ok, other=-1)
            ow = ew // K
            m = ch_ok[:, None] & (ew >= 0)[None, :]
            g = tl.load(g_base + (oh * sgh + ow * sgw)[None, :], mask=m, other=0.0)
            wt = tl.load(w_base + ((kh * K + ew % K) * swj + oh * swh + ow * sww)[None, :], mask=m, other=0.0)
            acc += g.to(ACC) * wt.to(ACC)
    out = out_ptr + b * sob + (ch * soc)[:, None] + (y * soh + x * sow)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=ch_ok[:, None] & x_ok[None, :])


@functools.cache
def _kernels(interpret: bool) -> tuple:
    """The two kernels, compiled (CUDA) or under Triton's interpreter (CPU tensors)."""
    if interpret:  # imported here: the interpreter needs numpy, which compiled kernels do not
        from triton.runtime.interpreter import InterpretedFunction

        wrap = InterpretedFunction
    else:
        wrap = triton.jit
    return wrap(_window_kernel), wrap(_value_grad_kernel)


@functools.lru_cache(maxsize=256)
def _preimages(size: int, out_size: int, kernel_size: int, stride: int, dilation: int, block: int,
               device: torch.device) -> tuple[Tensor, Tensor, int]:
    """For one axis: the ``(size, M)`` int32 table of packed ``o * k + kk`` pairs whose reflected read lands on
    each source index (-1 pads), and the longest list in each block of ``block`` consecutive indices."""
    pad = dilation * (kernel_size - 1) // 2
    o = torch.arange(out_size).repeat_interleave(kernel_size)
    kk = torch.arange(kernel_size).repeat(out_size)
    src = reflect_index(size, pad)[o * stride + kk * dilation]  # padded position o*s - pad + kk*d, shifted by pad
    order = torch.sort(src, stable=True).indices
    counts = torch.bincount(src, minlength=size)
    width = max(int(counts.max()), 1)
    rank = torch.arange(src.numel()) - (torch.cumsum(counts, 0) - counts)[src[order]]
    table = torch.full((size, width), -1, dtype=torch.int32)
    table[src[order], rank] = (o * kernel_size + kk)[order].to(torch.int32)
    tiles = -(-size // block)
    longest = torch.nn.functional.pad(counts, (0, tiles * block - size)).view(tiles, block).amax(1)
    return table.to(device), longest.to(device=device, dtype=torch.int32), width


def _launch_setup(v: Tensor, other: Tensor) -> tuple[bool, contextlib.AbstractContextManager, torch.dtype]:
    interpret = v.device.type != "cuda"
    guard = torch.cuda.device(v.device) if not interpret else contextlib.nullcontext()
    acc = tl.float64 if torch.float64 in (v.dtype, other.dtype) else tl.float32
    return interpret, guard, acc


def _window_call(v: Tensor, a: Tensor, out: Tensor, kernel_size: int, stride: int, dilation: int,
                 grad_weight: bool) -> Tensor:
    b, c, h, w = v.shape
    cw = out.shape[1] if grad_weight else a.shape[1]
    ho, wo = out.shape[-2:]
    a5 = a.unsqueeze(2) if grad_weight else a  # grad_out as (B, C, 1, Ho, Wo): same stride order as weight
    o5 = out if grad_weight else out.unsqueeze(2)
    interpret, guard, acc = _launch_setup(v, a)
    rows = cw if grad_weight else c
    block_c, block_p = min(16, triton.next_power_of_2(rows)), min(64, triton.next_power_of_2(ho * wo))
    grid = (b * triton.cdiv(ho * wo, block_p), triton.cdiv(rows, block_c))
    with guard:
        _kernels(interpret)[0][grid](
            v, a5, o5, c, cw, h, w, wo, ho * wo, dilation * (kernel_size - 1) // 2,
            max(2 * h - 2, 1), max(2 * w - 2, 1), stride, dilation, *v.stride(), *a5.stride(), *o5.stride(),
            K=kernel_size, GRAD_WEIGHT=grad_weight, ACC=acc, BLOCK_C=block_c, BLOCK_P=block_p)
    return out


@torch.library.custom_op("acmix::patchwise_triton", mutates_args=())
def _forward(v: Tensor, weight: Tensor, kernel_size: int, stride: int, dilation: int) -> Tensor:
    b, c, _, _ = v.shape
    ho, wo = weight.shape[-2:]
    out = torch.empty(b, c, ho, wo, dtype=torch.promote_types(v.dtype, weight.dtype), device=v.device)
    return _window_call(v, weight, out, kernel_size, stride, dilation, grad_weight=False)


@_forward.register_fake
def _(v: Tensor, weight: Tensor, kernel_size: int, stride: int, dilation: int) -> Tensor:
    return v.new_empty(v.shape[0], v.shape[1], *weight.shape[-2:], dtype=torch.promote_types(v.dtype, weight.dtype))


@torch.library.custom_op("acmix::patchwise_triton_backward", mutates_args=())
def _backward(grad: Tensor, v: Tensor, weight: Tensor, kernel_size: int, stride: int,
              dilation: int) -> tuple[Tensor, Tensor]:
    b, c, h, w = v.shape
    cw = weight.shape[1]
    ho, wo = weight.shape[-2:]
    d_weight = _window_call(v, grad, torch.empty(weight.shape, dtype=weight.dtype, device=v.device),
                            kernel_size, stride, dilation, grad_weight=True)
    d_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    block_p = min(64, triton.next_power_of_2(w))  # one source row per program
    block_c = min(triton.next_power_of_2(c), max(16, 1024 // block_p))
    tab_h, n_h, mh = _preimages(h, ho, kernel_size, stride, dilation, 1, v.device)
    tab_w, n_w, mw = _preimages(w, wo, kernel_size, stride, dilation, block_p, v.device)
    interpret, guard, acc = _launch_setup(v, weight)
    grid = (b * h * n_w.numel(), triton.cdiv(c, block_c))
    with guard:
        _kernels(interpret)[1][grid](
            grad, weight, d_v, tab_h, n_h, tab_w, n_w, c, cw, h, w, n_w.numel(), mh, mw, *grad.stride(),
            *weight.stride(), *d_v.stride(), K=kernel_size, ACC=acc, BLOCK_C=block_c, BLOCK_P=block_p)
    return d_v, d_weight


@_backward.register_fake
def _(grad: Tensor, v: Tensor, weight: Tensor, kernel_size: int, stride: int,
      dilation: int) -> tuple[Tensor, Tensor]:
    return torch.empty_like(v), torch.empty_like(weight)


def _setup_context(ctx, inputs, output) -> None:
    v, weight, ctx.kernel_size, ctx.stride, ctx.dilation = inputs
    ctx.save_for_backward(v, weight)


def _autograd(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
    v, weight = ctx.saved_tensors
    d_v, d_weight = _backward(grad, v, weight, ctx.kernel_size, ctx.stride, ctx.dilation)
    return d_v, d_weight, None, None, None


_forward.register_autograd(_autograd, setup_context=_setup_context)


def patchwise_aggregation_triton(v: Tensor, weight: Tensor, *, kernel_size: int, stride: int = 1,
                                 dilation: int = 1) -> Tensor:
    """The patchwise aggregation on the Triton kernels (inputs already checked by the caller).

    Output dtype is the promotion of ``v`` and ``weight`` (as the torch path);
    accumulation is float32 (float64 for float64 inputs).
    """
    return _forward(v, weight, kernel_size, stride, dilation)
