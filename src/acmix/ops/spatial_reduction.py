"""PVT v1's spatial-reduction attention (Wang et al., ICCV 2021) as a functional op.

For tokens ``x`` ``(B, N, C)`` of an ``H x W`` map (``N = P + H*W`` with ``P``
prefix tokens, e.g. a class token, in front):

* ``q = x W_q^T + b_q`` on every token;
* the keys and values are computed from a reduced map: with ``sr_ratio`` ``R >
  1`` the spatial tokens go through a ``R x R`` convolution with stride ``R``
  (``sr``, with bias) and a LayerNorm (``norm``), giving ``floor(H/R) *
  floor(W/R)`` tokens; with ``R = 1`` all ``N`` tokens are used as they are;
* ``k, v = split(x_r W_kv^T + b_kv)`` (the first ``C`` outputs are the keys);
* per head (``head_dim = C / heads``): ``softmax(q k^T * head_dim**-0.5) v``;
  heads are concatenated and, if given, ``proj`` is applied.

Prefix tokens are only allowed with ``R = 1`` (PVT puts its class token in the
last stage, whose ratio is 1).

Functions:

* :func:`sra_project` -- q ``(B, heads, N, head_dim)`` and the reduced k, v
  ``(B, heads, M, head_dim)`` (ACmix-PVT's convolution path reuses them);
* :func:`sra_attend` -- the attention of those, ``(B, N, C)`` (``scaled_dot_product_attention``);
* :func:`spatial_reduction_attention` -- the whole op (fast form);
* :func:`spatial_reduction_attention_reference` -- the slow, obvious form: the
  reduction convolution as an explicit sum over the ``R*R`` patch offsets, the
  LayerNorm from its formula, the softmax written out.  Any dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import packed, required, static_sizes

__all__ = ["SRAWeights", "spatial_reduction_attention", "spatial_reduction_attention_reference",
           "sra_attend", "sra_project"]


class SRAWeights(NamedTuple):
    """PVT's tensors: ``q`` ``(C, C)``, ``kv`` ``(2C, C)``, ``sr`` ``(C, C, R, R)`` (``None`` for R = 1),
    ``norm`` ``(C,)``, ``proj`` ``(C, C)`` (optional)."""

    q_weight: Tensor
    q_bias: Tensor | None
    kv_weight: Tensor
    kv_bias: Tensor | None
    sr_weight: Tensor | None = None
    sr_bias: Tensor | None = None
    norm_weight: Tensor | None = None
    norm_bias: Tensor | None = None
    proj_weight: Tensor | None = None
    proj_bias: Tensor | None = None


def _check(x: Tensor, size: tuple[int, int], w: SRAWeights, heads: int, sr_ratio: int) -> tuple[int, int]:
    """Validate; return ``(prefix tokens, channels)``."""
    for name, value in (("heads", heads), ("sr_ratio", sr_ratio)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"x must be a 3-D tensor (B, N, C), got {getattr(x, 'shape', type(x))}")
    h, wd = size
    _, n, c = x.shape
    if h <= 0 or wd <= 0 or n < h * wd:
        raise ValueError(f"size={tuple(size)} does not fit x with N={n} tokens")
    if c % heads:
        raise ValueError(f"channels C={c} are not divisible by heads={heads}")
    prefix = n - h * wd
    if sr_ratio > 1:
        if prefix:
            raise ValueError(f"{prefix} prefix token(s) with sr_ratio={sr_ratio}: prefix tokens need sr_ratio=1")
        if h < sr_ratio or wd < sr_ratio:
            raise ValueError(f"feature map {h}x{wd} is smaller than sr_ratio={sr_ratio}")
        if w.sr_weight is None or tuple(w.sr_weight.shape) != (c, c, sr_ratio, sr_ratio):
            raise ValueError(f"sr_weight must have shape {(c, c, sr_ratio, sr_ratio)} for sr_ratio={sr_ratio}")
        if w.norm_weight is None or tuple(w.norm_weight.shape) != (c,):
            raise ValueError(f"norm_weight must have shape {(c,)} for sr_ratio={sr_ratio}")
    if tuple(w.q_weight.shape) != (c, c):
        raise ValueError(f"q_weight has shape {tuple(w.q_weight.shape)}, expected {(c, c)}")
    if tuple(w.kv_weight.shape) != (2 * c, c):
        raise ValueError(f"kv_weight has shape {tuple(w.kv_weight.shape)}, expected {(2 * c, c)}")
    return prefix, c


def _heads(t: Tensor, heads: int) -> Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, heads, c // heads).transpose(1, 2)


def sra_project(x: Tensor, size: tuple[int, int], w: SRAWeights, *, heads: int, sr_ratio: int,
                eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """``q`` ``(B, heads, N, hd)`` and the reduced ``k``, ``v`` ``(B, heads, M, hd)``.

    ``M = floor(H/R) * floor(W/R)`` for ``R > 1`` (row-major over the reduced map), else ``N``.
    """
    _check(x, size, w, heads, sr_ratio)
    b, _, c = x.shape
    q = F.linear(x, w.q_weight, w.q_bias)
    if sr_ratio > 1:
        xr = x.transpose(1, 2).reshape(b, c, size[0], size[1])  # a channels-last view for B > 1
        if not static_sizes(b, *size):  # traced, the conv's memory format would be chosen (and guarded) on B == 1
            xr = packed(xr)
        xr = F.conv2d(xr, required(w.sr_weight, "sr_weight"), w.sr_bias, stride=sr_ratio).flatten(2).transpose(1, 2)
        xr = F.layer_norm(xr, (c,), w.norm_weight, w.norm_bias, eps)
    else:
        xr = x
    k, v = F.linear(xr, w.kv_weight, w.kv_bias).chunk(2, dim=-1)
    return _heads(q, heads), _heads(k, heads), _heads(v, heads)


def sra_attend(q: Tensor, k: Tensor, v: Tensor, *, dropout_p: float = 0.0) -> Tensor:
    """Multi-head attention of ``(B, heads, N, hd)`` queries on ``(B, heads, M, hd)`` keys -> ``(B, N, C)``."""
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    b, heads, n, hd = out.shape
    return out.transpose(1, 2).reshape(b, n, heads * hd)


def spatial_reduction_attention(x: Tensor, size: tuple[int, int], w: SRAWeights, *, heads: int,
                                sr_ratio: int, eps: float = 1e-6, dropout_p: float = 0.0) -> Tensor:
    """PVT v1 spatial-reduction attention ``(B, N, C) -> (B, N, C)`` (``proj`` applied if given)."""
    q, k, v = sra_project(x, size, w, heads=heads, sr_ratio=sr_ratio, eps=eps)
    out = sra_attend(q, k, v, dropout_p=dropout_p)
    if w.proj_weight is not None:
        out = F.linear(out, w.proj_weight, w.proj_bias)
    return out


def _linear(t: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = torch.einsum("bnc,oc->bno", t, weight)
    return out if bias is None else out + bias


def spatial_reduction_attention_reference(x: Tensor, size: tuple[int, int], w: SRAWeights, *, heads: int,
                                          sr_ratio: int, eps: float = 1e-6,
                                          return_qkv: bool = False) -> Tensor | tuple[Tensor, ...]:
    """The slow, obvious spatial-reduction attention (module docstring).

    With ``return_qkv`` also returns the ``q``, ``k``, ``v`` of :func:`sra_project`.
    """
    _, c = _check(x, size, w, heads, sr_ratio)
    b, n, _ = x.shape
    h, wd = size
    hd = c // heads
    q = _linear(x, w.q_weight, w.q_bias)
    if sr_ratio > 1:
        r = sr_ratio
        hr, wr = h // r, wd // r
        grid = x.reshape(b, h, wd, c)[:, :hr * r, :wr * r]
        # each reduced token is sum over its r x r patch offsets (a, e) of W_sr[:, :, a, e] x[patch pixel]
        red = torch.zeros(b, hr, wr, c, dtype=x.dtype, device=x.device)
        sr = required(w.sr_weight, "sr_weight")
        for a in range(r):
            for e in range(r):
                red = red + torch.einsum("bijc,oc->bijo", grid[:, a::r, e::r], sr[:, :, a, e])
        if w.sr_bias is not None:
            red = red + w.sr_bias
        red = red.reshape(b, hr * wr, c)
        mean = red.mean(-1, keepdim=True)
        var = ((red - mean) ** 2).mean(-1, keepdim=True)
        red = (red - mean) / torch.sqrt(var + eps)
        if w.norm_weight is not None:
            red = red * w.norm_weight
        if w.norm_bias is not None:
            red = red + w.norm_bias
    else:
        red = x
    kv = _linear(red, w.kv_weight, w.kv_bias)
    k, v = kv[..., :c], kv[..., c:]
    qh, kh, vh = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    logits = torch.einsum("bhnd,bhmd->bhnm", qh, kh) * hd**-0.5
    ex = torch.exp(logits - logits.amax(-1, keepdim=True))
    att = ex / ex.sum(-1, keepdim=True)
    out = torch.einsum("bhnm,bhmd->bhnd", att, vh).transpose(1, 2).reshape(b, n, c)
    if w.proj_weight is not None:
        out = _linear(out, w.proj_weight, w.proj_bias)
    if return_qkv:
        return out, qh, kh, vh
    return out
