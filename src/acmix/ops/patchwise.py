"""SAN's patchwise aggregation (Zhao, Jia, Koltun, CVPR 2020) as a functional op.

Patchwise self-attention computes, for every output pixel ``i``, one weight per
window position ``j`` *and* per channel group from the whole patch, then
aggregates the values of the window::

    out[b, c, i] = sum_j  weight[b, c % Cw, j, i] * v[b, c, window_j(i)]

``v`` is ``(B, C, H, W)``; ``weight`` is ``(B, Cw, k*k, Ho, Wo)`` with ``C`` a
multiple of ``Cw``: channel ``c`` reads weight channel ``c % Cw`` (SAN's
``share_planes = C / Cw`` channels share each weight map, tiled, not
interleaved).  The window has ``kernel_size`` (odd) and ``dilation``; the value
map is reflect-padded by ``dilation * (kernel_size - 1) // 2`` and the windows
are taken with ``stride``, so the output is ``(H - 1) // stride + 1`` by
``(W - 1) // stride + 1``.

Reflect padding follows SAN's CUDA kernel (``-i`` below 0, ``2 (n - 1) - i``
past the end) where that is defined (pad < size).  On maps too small for a
single reflection it is iterated, and a one-pixel axis repeats its pixel (the
same rule as :func:`acmix.ops.common.reflect_index`), so every input size works.

Two implementations:

* :func:`patchwise_aggregation_reference` -- the slow, obvious form: one window
  offset and one output pixel at a time, reflection done with integer
  arithmetic, any dtype (float64 for tests).
* :func:`patchwise_aggregation` -- the fast form: the value map is padded once
  and the ``k*k`` shifted views are multiply-accumulated into the output, so no
  ``(B, C, k*k, H, W)`` unfold tensor is ever materialised (SAN's and the
  authors' unfold code hold ``k*k`` = 49 times the activation at 7x7).
  On CUDA tensors it runs fused Triton kernels instead where Triton imports
  (``triton_patchwise.py``; not while tracing or compiling); ``backend=``
  forces either path.

:func:`reflect_windows` is the (small) unfold the patchwise *weight* branch
needs for the keys, in SAN's channel order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .common import data_dependent_ok, reflect_pad
from .config import Backend, as_enum

__all__ = ["patchwise_aggregation", "patchwise_aggregation_reference", "patchwise_output_size",
           "reflect_windows"]


def _check_geometry(kernel_size: int, stride: int, dilation: int) -> None:
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")


def patchwise_output_size(height: int, width: int, stride: int = 1) -> tuple[int, int]:
    return (height - 1) // stride + 1, (width - 1) // stride + 1


def _check(v: Tensor, weight: Tensor, kernel_size: int, stride: int, dilation: int) -> None:
    _check_geometry(kernel_size, stride, dilation)
    if v.dim() != 4:
        raise ValueError(f"v must be 4-D (B, C, H, W), got shape {tuple(v.shape)}")
    if weight.dim() != 5:
        raise ValueError(f"weight must be 5-D (B, Cw, k*k, Ho, Wo), got shape {tuple(weight.shape)}")
    b, c, h, w = v.shape
    # an empty batch is fine, as for nn.Conv2d; one comparison per size (export fix: min(c, h, w) compares H
    # with W, which guards an exported program on the example's H <= W)
    if c == 0 or h == 0 or w == 0:
        raise ValueError(f"v must have channels, height and width, got shape {tuple(v.shape)}")
    ho, wo = patchwise_output_size(h, w, stride)
    cw = weight.shape[1]
    want = (b, cw, kernel_size * kernel_size, ho, wo)
    if cw == 0 or c % cw or tuple(weight.shape) != want:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}; for v of shape {tuple(v.shape)}, "
            f"kernel_size={kernel_size} and stride={stride} it must be (B, Cw, k*k, Ho, Wo) = "
            f"{(b, 'Cw', kernel_size * kernel_size, ho, wo)} with C % Cw == 0")


def reflect_windows(x: Tensor, kernel_size: int, *, dilation: int = 1, stride: int = 1) -> Tensor:
    """The reflect-padded ``kernel_size**2`` windows of ``x``: ``(B, C, H, W) -> (B, C, k*k, Ho, Wo)``.

    Window position ``j = kh * k + kw``; reshaping to ``(B, C * k * k, Ho, Wo)``
    gives ``nn.Unfold``'s channel order ``c * k * k + j`` (what SAN feeds its
    weight branch).  Costs ``k*k`` times ``x`` in memory: use it for the small
    key maps, not for the values (see :func:`patchwise_aggregation`).
    """
    _check_geometry(kernel_size, stride, dilation)
    pad = dilation * (kernel_size - 1) // 2
    h, w = x.shape[-2:]
    ho, wo = patchwise_output_size(h, w, stride)
    xp = reflect_pad(x, pad)
    views = []
    for kh in range(kernel_size):
        for kw in range(kernel_size):
            r, c = kh * dilation, kw * dilation
            views.append(xp[..., r:r + stride * (ho - 1) + 1:stride, c:c + stride * (wo - 1) + 1:stride])
    return torch.stack(views, dim=-3)


def _use_triton(v: Tensor, backend: Backend | str) -> bool:
    """``AUTO``: Triton for CUDA tensors where it imports, outside tracing and unless :func:`acmix.ops.use_backend`
    set ``eager``/``reference``; ``TRITON``: that, or an error."""
    chosen = as_enum(Backend, backend, "backend")
    if chosen not in (Backend.AUTO, Backend.EAGER, Backend.TRITON):
        raise ValueError(f"backend must be 'auto', 'eager' or 'triton' for the patchwise aggregation, got {backend!r}")
    if chosen is Backend.AUTO:  # use_backend('eager' / 'reference') reaches this op too
        from .functional import _default

        chosen = Backend.EAGER if _default() in (Backend.EAGER, Backend.REFERENCE) else chosen
    if chosen is Backend.EAGER:
        return False
    fits = data_dependent_ok() and (v.device.type == "cuda" or chosen is Backend.TRITON)
    if fits:
        from . import triton_patchwise  # imports triton: only for inputs that can use it

        fits = triton_patchwise.available(v)
    if chosen is Backend.TRITON and not fits:
        raise ValueError(f"backend='triton' needs Triton and a CUDA tensor (or TRITON_INTERPRET=1 for CPU "
                         f"tensors) outside tracing, got a {v.dtype} tensor on {v.device}")
    return fits and v.shape[0] > 0  # an empty batch launches nothing: the eager path's empty output


def patchwise_aggregation(v: Tensor, weight: Tensor, *, kernel_size: int, stride: int = 1,
                          dilation: int = 1, backend: Backend | str = Backend.AUTO) -> Tensor:
    """``out[b, c, i] = sum_j weight[b, c % Cw, j, i] * v_pad[b, c, window_j(i)]`` (module docstring).

    Pads ``v`` once and accumulates one shifted view per window offset, so the
    peak extra memory is about one padded copy of ``v`` (autograd keeps only
    views).  Works in any floating dtype and under autocast (the output takes
    the promoted dtype of ``v`` and ``weight``).  ``backend``: ``'auto'``
    (Triton kernels for CUDA tensors where Triton imports, outside tracing),
    ``'eager'`` (this path) or ``'triton'`` (CPU tensors need ``TRITON_INTERPRET=1``).
    """
    _check(v, weight, kernel_size, stride, dilation)
    if _use_triton(v, backend):
        from .triton_patchwise import patchwise_aggregation_triton

        return patchwise_aggregation_triton(v, weight, kernel_size=kernel_size, stride=stride, dilation=dilation)
    b, c, h, w = v.shape
    cw = weight.shape[1]
    ho, wo = patchwise_output_size(h, w, stride)
    pad = dilation * (kernel_size - 1) // 2
    vp = reflect_pad(v, pad).view(b, c // cw, cw, h + 2 * pad, w + 2 * pad)
    wt = weight.unsqueeze(1)  # (B, 1, Cw, k*k, Ho, Wo): broadcast over the share groups
    out = None
    for kh in range(kernel_size):
        for kw in range(kernel_size):
            r, s = kh * dilation, kw * dilation
            view = vp[..., r:r + stride * (ho - 1) + 1:stride, s:s + stride * (wo - 1) + 1:stride]
            term = wt[:, :, :, kh * kernel_size + kw] * view
            out = term if out is None else out + term
    assert out is not None  # kernel_size >= 1
    return out.reshape(b, c, ho, wo)


def _reflect(i: int, n: int) -> int:
    """Reflect index ``i`` into ``[0, n)`` (iterating the reflection as often as needed)."""
    if n == 1:
        return 0
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def patchwise_aggregation_reference(v: Tensor, weight: Tensor, *, kernel_size: int, stride: int = 1,
                                    dilation: int = 1) -> Tensor:
    """The slow, obvious patchwise aggregation: SAN's CUDA kernel written out pixel by pixel."""
    _check(v, weight, kernel_size, stride, dilation)
    b, c, h, w = v.shape
    cw = weight.shape[1]
    ho, wo = patchwise_output_size(h, w, stride)
    pad = dilation * (kernel_size - 1) // 2
    channel_weight = torch.arange(c, device=v.device) % cw  # weight channel of every value channel
    wt = weight.index_select(1, channel_weight)  # (B, C, k*k, Ho, Wo)
    rows = []
    for oh in range(ho):
        cols = []
        for ow in range(wo):
            acc = torch.zeros(b, c, dtype=torch.promote_types(v.dtype, weight.dtype), device=v.device)
            for kh in range(kernel_size):
                for kw in range(kernel_size):
                    ih = _reflect(oh * stride - pad + kh * dilation, h)
                    iw = _reflect(ow * stride - pad + kw * dilation, w)
                    acc = acc + wt[:, :, kh * kernel_size + kw, oh, ow] * v[:, :, ih, iw]
            cols.append(acc)
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)
