"""Swin's windows at any input size, written so that a symbolic size is never branched on.

Used by :class:`acmix.models.acmix_swin.SwinACmixBlock`: the window and shift along an
axis, zero padding and the cyclic shift as gathers (no slice bound for ``torch.export``
to guard on), the shifted-window mask from ``arange`` comparisons, and the relative
position index of a window smaller than the configured one.  Each is tested against
its eager definition (``torch.roll`` / ``F.pad``, the authors' nine-region mask) in
``tests/models/test_swin_export.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.common import packed, static_sizes, tensor_if_symbolic

__all__ = ["axis_window", "pad_roll", "relative_position_index", "shifted_window_mask", "unroll_crop"]


def relative_position_index(wh: int, ww: int, window: int, device: torch.device | None = None) -> Tensor:
    """Index into a ``(2 * window - 1) ** 2`` bias table for a ``wh x ww`` window (``wh, ww <= window``).

    timm's ``get_relative_position_index`` sizes the table by the window itself; a map
    smaller than the window needs the full window's table, indexed here.
    """
    # the (wh, ww, wh, ww) offsets by broadcasting, then one reshape of that fresh tensor: flattening a meshgrid
    # would ask whether an axis has size 1, and positions from ``// ww`` give inductor an index it cannot bound
    ys, xs = torch.arange(wh, device=device), torch.arange(ww, device=device)
    dy = ys[:, None, None, None] - ys[None, None, :, None] + window - 1
    dx = xs[None, :, None, None] - xs[None, None, None, :] + window - 1
    return (dy * (2 * window - 1) + dx).reshape(wh * ww, wh * ww)


def axis_window(size: int, window: int, shift: int) -> tuple[int, int]:
    """``(window, shift)`` along an axis of ``size``: ``(size, 0)`` if ``size <= window``, else ``(window, shift)``.

    Written with ``torch.sym_min`` rather than a comparison, so that a symbolic ``size``
    (``torch.export``, ``torch.compile(dynamic=True)``) is not guarded on either regime.
    """
    win = torch.sym_min(size, window)
    big = torch.sym_min(size, window + 1) - win  # 1 iff size > window
    return win, shift * big  # type: ignore[return-value]  # SymInts where size is symbolic, ints otherwise


def shifted_window_mask(h: int, w: int, wh: int, ww: int, sh: int, sw: int, *,
                        device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Swin's ``(nW, N, N)`` mask for a cyclically shifted ``h x w`` map: 0 within a region, -100 across.

    ``h, w`` are multiples of ``wh, ww``.  Built with tensor ops from the (possibly symbolic) sizes:
    the regions are the rows before the last window, the last window's first ``wh - sh`` rows and
    the last ``sh`` rows (one region when ``sh == 0``), and likewise along ``w``.
    """
    def regions(size: int, win: int, shift: int) -> Tensor:
        ids = torch.arange(size, device=device)
        return (ids >= size - win).long() + (ids >= size - shift).long()

    img = regions(h, wh, sh)[:, None] * 3 + regions(w, ww, sw)[None, :]
    nh, nw = h // wh, w // ww
    win = packed(img.view(nh, wh, nw, ww).transpose(1, 2)).view(nh * nw, wh * ww)  # (nW, N), windows row-major
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros(diff.shape, device=device, dtype=dtype).masked_fill(diff != 0, -100.0)


def pad_roll(x: Tensor, dim: int, size: int, padded: int, shift: int) -> Tensor:
    """``x`` zero-padded from ``size`` to ``padded`` along ``dim``, then rolled by ``-shift`` (``torch.roll``)."""
    if _static_identity(size, padded, shift):
        return x
    ids = torch.arange(padded, device=x.device)
    src = (ids + shift) % tensor_if_symbolic(padded, ids)
    shape = [1] * x.dim()
    shape[dim] = padded
    return torch.where((src < size).view(shape), x.index_select(dim, src.clamp(max=size - 1)), 0)


def unroll_crop(x: Tensor, dim: int, size: int, padded: int, shift: int) -> Tensor:
    """The inverse of :func:`pad_roll`: roll back by ``shift``, keep the first ``size`` entries along ``dim``."""
    if _static_identity(size, padded, shift):
        return x
    ids = torch.arange(size, device=x.device)
    return x.index_select(dim, (ids - shift) % tensor_if_symbolic(padded, ids))


def _static_identity(size: int, padded: int, shift: int) -> bool:
    """True for static sizes (:func:`acmix.ops.common.static_sizes`) that need no padding and no shift:
    the gathers would copy ``x`` unchanged.  Traced, the comparison would guard the graph on "no padding"."""
    return static_sizes(size, padded, shift) and size == padded and shift == 0
