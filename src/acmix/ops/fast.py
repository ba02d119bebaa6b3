"""Fast exact ACmix: the rewrites of ``docs/fast-paths.md``, shared by the eager, CPU-kernel and Triton paths.

* Stage I is one GEMM (rewrite 4).  On the eager path its output channels are
  ordered ``(d, piece)`` -- ``d`` the channel within a head, ``piece =
  which*heads + head`` for ``which`` in q, k, v -- exactly the input layout of
  the convolution path's group convolution, so no permute copy is needed there;
  the attention reads q, k, v of each head as strided views (the Triton
  kernels read them in place, in either memory format).  The C++ CPU kernel
  reads any channel in place and takes the plain ``[q, k, v]`` order.
* The convolution path folds ``fc`` into the group convolution (rewrite 3):
  ``W'[o, p] = sum_t W[o, t] fc[t, p]``, one group conv with ``3*heads`` inputs
  per group.  An ``fc`` bias (Swin) is carried exactly by convolving a map of
  ones, since the zero padding does not carry it.
* The attention path drops the position term's constant part (rewrite 1):
  ``logit = scale * q.k_j - r.loc_j`` with ``r = W_p^T (scale q)``; ``conv_p``'s
  bias cancels.  The window attention itself runs on the C++ CPU kernel
  (``native.py``), the Triton kernels (``triton_attention.py``) or, eagerly, as
  dense attention: over the whole map with a ``log(multiplicity)`` bias on small
  maps, over b x b query tiles and their reflect-padded halo with one shared
  mask (rewrite 2), or -- where a large dilation makes halos mostly empty --
  over the gathered ``kernel_att**2`` window keys of every query.
* A non-finite key or value must only reach the outputs whose windows hold it,
  as in the reference; a GEMM over many windows would spread it (``0 * nan``),
  so the eager path computes with such pixels zeroed and marks the outputs of
  the windows that hold them as NaN (:func:`_nonfinite_windows`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import native
from .common import (
    ACmixWeights,
    blend,
    data_dependent_ok,
    position_grid,
    reflect_index,
    reflect_pad,
    reflect_positions,
    required,
    shift_kernel,
    static_sizes,
    tensor_if_symbolic,
)
from .config import ACmixConfig, Backend, ShiftMode

__all__ = ["acmix_fast", "attention_eager", "dense_attention_fits", "prefer_dense", "shift_conv_fast"]

TILE = 7  # query tile side of the eager tiled path (best measured at 56x56, docs/fast-paths.md)
GLOBAL_MAX = 256 * 256  # eager: dense attention over the whole map up to this many (query, key) pairs


def _full_conv_weight(conv_weight: Tensor | None, shift: ShiftMode, *, out_channels: int, head_dim: int,
                      kernel: int, like: Tensor) -> Tensor:
    """The ``(C_out, k^2, k, k)`` group-conv kernel every shift mode amounts to (``like``: device, dtype)."""
    if shift is ShiftMode.TENSOR:
        conv_weight = shift_kernel(kernel, device=like.device, dtype=like.dtype).expand(head_dim, -1, -1, -1)
    conv_weight = required(conv_weight, "conv_weight")
    if shift is not ShiftMode.GROUPED:
        conv_weight = conv_weight.repeat_interleave(out_channels // conv_weight.shape[0], dim=0)
    return conv_weight


def _fold(conv_weight: Tensor, fc_weight: Tensor) -> Tensor:
    """``W'[o, p] = sum_t W[o, t] fc[t, p]``: ``fc`` folded into the group conv (docs/fast-paths.md, rewrite 3)."""
    fc = fc_weight.reshape(conv_weight.shape[1], -1).to(conv_weight.dtype)
    return torch.einsum("otuv,tp->opuv", conv_weight, fc).contiguous()  # contiguous: else a slow conv path


def _folded_conv(inp: Tensor, fc_weight: Tensor, conv_weight: Tensor, conv_bias: Tensor | None,
                 fc_bias: Tensor | None, *, kernel: int, stride: int, groups: int) -> Tensor:
    """fc then shift conv as one group conv; ``inp`` channels are ordered ``(d, piece)``."""
    folded = _fold(conv_weight, fc_weight).to(inp.dtype)
    out = F.conv2d(inp, folded, conv_bias, stride=stride, padding=kernel // 2, groups=groups)
    if fc_bias is not None:
        bias_kernel = torch.einsum("otuv,t->ouv", conv_weight, fc_bias.to(conv_weight.dtype)).unsqueeze(1)
        ones = inp.new_ones(1, 1, inp.shape[-2], inp.shape[-1])
        out = out + F.conv2d(ones, bias_kernel.to(inp.dtype), stride=stride, padding=kernel // 2)
    return out


def shift_conv_fast(pieces: Tensor, fc_weight: Tensor, conv_weight: Tensor | None,
                    conv_bias: Tensor | None = None, *, kernel_conv: int, out_channels: int, stride: int = 1,
                    shift: ShiftMode = ShiftMode.GROUPED, fc_bias: Tensor | None = None) -> Tensor:
    """:func:`acmix.ops.shift_conv` with ``fc`` folded into the group conv."""
    b, p, d, h, w = pieces.shape
    weight = _full_conv_weight(conv_weight, shift, out_channels=out_channels, head_dim=d, kernel=kernel_conv,
                               like=fc_weight)
    inp = pieces.transpose(1, 2).reshape(b, d * p, h, w)
    return _folded_conv(inp, fc_weight, weight, conv_bias, fc_bias, kernel=kernel_conv, stride=stride, groups=d)


# ---------------------------------------------------------------- eager attention


@functools.lru_cache(maxsize=128)
def _log_multiplicity(h: int, w: int, cfg_key: tuple[int, int, int], device: torch.device,
                      dtype: torch.dtype) -> Tensor:
    """``(Ho*Wo, H*W)`` bias: log of how often pixel j sits in query i's padded window, -inf if never."""
    ka, s, dil = cfg_key
    pad = dil * (ka - 1) // 2

    def counts(n: int) -> Tensor:
        idx = reflect_index(n, pad)
        no = (n - 1) // s + 1
        rows = torch.arange(no).view(-1, 1) * s + torch.arange(ka).view(1, -1) * dil  # (no, ka)
        return F.one_hot(idx[rows], n).sum(1).to(torch.float64)  # (no, n)

    ch, cw = counts(h), counts(w)
    mult = ch[:, None, :, None] * cw[None, :, None, :]
    bias = mult.log().reshape(ch.shape[0] * cw.shape[0], h * w)
    return bias.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=128)
def _tile_mask(tile: int, halo: tuple[int, int], cfg_key: tuple[int, int, int], device: torch.device,
               dtype: torch.dtype) -> Tensor:
    """``(tile^2, halo_h*halo_w)`` additive mask: 0 on each query's window inside the halo, -inf elsewhere."""
    ka, s, dil = cfg_key
    hh, hw = halo
    allowed = torch.zeros(tile, tile, hh, hw, dtype=torch.bool)
    win = torch.arange(ka) * dil
    for u in range(tile):
        for v in range(tile):
            allowed[u, v, (s * u + win).view(-1, 1), (s * v + win).view(1, -1)] = True
    mask = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, -math.inf)
    return mask.reshape(tile * tile, hh * hw).to(device=device, dtype=dtype)


def _cached(fn: functools._lru_cache_wrapper[Tensor], *args: Hashable) -> Tensor:
    """Export fix: the ``lru_cache``d masks are bypassed while tracing (export, compile), else the cache
    would keep the tracer's fake tensors and hand them to later eager calls."""
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
    return fn.__wrapped__(*args) if tracing else fn(*args)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """softmax(q k^T + bias) v on (N, L, E) / (N, S, E) / (N, S, Ev) (scale already in q).

    On CUDA through ``scaled_dot_product_attention`` (fused kernels, no score
    matrix kept); on the CPU as baddbmm + softmax + bmm, which measured faster
    there than SDPA's masked math path.
    """
    if q.device.type != "cuda":
        return torch.softmax(torch.baddbmm(bias, q, k.transpose(1, 2)), dim=-1) @ v
    ev = v.shape[-1]
    if ev < q.shape[-1]:  # kernels want equal head dims: zero channels change nothing
        v = F.pad(v, (0, q.shape[-1] - ev))
    out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), attn_mask=bias,
                                         scale=1.0)
    return out.squeeze(1)[..., :ev]


def dense_attention_fits(h: int, w: int, stride: int) -> bool:
    """Whether the eager path attends over the whole map (``log(multiplicity)`` bias) at this size."""
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    return ho * wo * h * w <= GLOBAL_MAX


def prefer_dense(h: int, w: int, cfg: ACmixConfig) -> bool:
    """Whether the eager dense attention beats the compiled row kernel at this size (measured, 2 threads).

    Dense attention wastes ``H*W / kernel_att**2`` of its work but runs as GEMMs;
    on maps up to 8x8 it measured faster than the kernel (0.92x vs 1.12x a conv
    forward at 512 channels, 7x7), from 28x28 on the kernel is faster; at 14x14
    eager measured faster but needs more memory (``benchmarks/op_bench.py``,
    README).  The rule applies only where nothing is measured (``autotune.py``).
    """
    return static_sizes(h, w) and dense_attention_fits(h, w, cfg.stride) and h * w <= 64


def _halo_index(h: int, w: int, pad: int, tiles: tuple[int, int], step: int, halo: int,
                device: torch.device) -> Tensor:
    """Export fix: flat source pixel ``(tiles, halo^2)`` of every halo position of every tile, reflect rule.

    Built from ``arange(tiles)`` and ``arange(halo^2)`` directly (no view of a ``(th, tw, halo, halo)``
    grid, which would guard on whether ``th`` or ``tw`` is 1).
    """
    th, tw = tiles
    tile = torch.arange(th * tw, device=device)[:, None]
    p = torch.arange(halo * halo, device=device)[None, :]
    tw = tensor_if_symbolic(tw, tile)
    rows = reflect_positions(tile // tw * step + p // halo - pad, h)
    cols = reflect_positions(tile % tw * step + p % halo - pad, w)
    return rows * w + cols


def position_term(qs: Tensor, pe_weight: Tensor, scale: float) -> Tensor:
    """``scale * (q . W_p)`` per query, ``(B, heads, 2, Ho, Wo)`` from ``(B, heads, hd, Ho, Wo)`` queries
    (rewrite 1, ``docs/fast-paths.md``).  A 1x1 conv over ``B * heads`` rather than an einsum, whose
    batch broadcast guards exported programs on ``B != 1``."""
    b, heads, hd, ho, wo = qs.shape
    r = F.conv2d(qs.reshape(b * heads, hd, ho, wo), pe_weight.to(qs.dtype).t()[:, :, None, None])
    return r.view(b, heads, pe_weight.shape[1], ho, wo) * scale


def _nonfinite_windows(bad: Tensor, *, kernel: int, stride: int, dilation: int) -> Tensor | None:
    """``(B, heads, Ho, Wo)``: outputs whose window holds a ``bad`` ``(B, heads, H, W)`` pixel; None if none."""
    if data_dependent_ok() and bad.device.type != "meta" and not bool(bad.any()):  # meta: shapes only
        return None
    b, heads, h, w = bad.shape
    padded = reflect_pad(bad.to(torch.float32).reshape(b * heads, 1, h, w), dilation * (kernel - 1) // 2)
    hit = F.max_pool2d(padded, kernel, stride=stride, dilation=dilation)
    return hit.reshape(b, heads, *hit.shape[-2:]) > 0


def attention_eager(q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, *, scale: float, kernel: int,
                    stride: int, dilation: int) -> Tensor:
    """Window attention as dense attention (``docs/fast-paths.md``, rewrites 1-2).

    ``q`` is the strided query map ``(B, heads, hd, Ho, Wo)`` (unscaled), ``r = W_p^T (scale q)`` the
    position term ``(B, heads, 2, Ho, Wo)`` or None, ``k``/``v`` are ``(B, heads, hd, H, W)``.
    Returns ``(B, heads*hd, Ho, Wo)``.  Non-finite keys and values stay in their windows.
    """
    args = {"kernel": kernel, "stride": stride, "dilation": dilation}
    keep = torch.isfinite(k).all(2, keepdim=True) & torch.isfinite(v).all(2, keepdim=True)  # (B, heads, 1, H, W)
    poison = _nonfinite_windows(~keep.squeeze(2), **args)
    if poison is not None:
        k, v = k.where(keep, 0.0), v.where(keep, 0.0)
    out = _attention_finite(q, r, k, v, scale=scale, **args)
    if poison is None:
        return out
    return out.masked_fill(poison.repeat_interleave(q.shape[2], dim=1), math.nan)


def _attention_finite(q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, *, scale: float, kernel: int,
                      stride: int, dilation: int) -> Tensor:
    """:func:`attention_eager` for finite keys and values: dense, tiled or gathered."""
    b, heads, hd, ho, wo = q.shape
    h, w = k.shape[-2:]
    n = b * heads
    q = q * scale
    if r is not None:
        loc = position_grid(h, w, device=k.device, dtype=k.dtype).expand(b, heads, 2, h, w)
        q = torch.cat([q, -r], 2)
        k = torch.cat([k, loc], 2)
    e = q.shape[2]
    key = (kernel, stride, dilation)
    if static_sizes(h, w) and dense_attention_fits(h, w, stride):
        bias = _cached(_log_multiplicity, h, w, key, q.device, q.dtype)
        out = _sdpa(q.reshape(n, e, ho * wo).transpose(1, 2), k.reshape(n, e, h * w).transpose(1, 2),
                    v.reshape(n, hd, h * w).transpose(1, 2), bias)
        return out.transpose(1, 2).reshape(b, heads * hd, ho, wo)

    t = TILE
    halo = stride * (t - 1) + dilation * (kernel - 1) + 1
    if halo * halo > 2 * kernel * kernel * t * t:  # mostly-empty halos (large dilation): gather the windows
        return _attention_gather(q, k, v, kernel=kernel, stride=stride, dilation=dilation)
    pad = dilation * (kernel - 1) // 2
    th, tw = (ho + t - 1) // t, (wo + t - 1) // t  # export fix: no floor division of negatives
    # Compile fix: under a compiler one spare row and column of (padded, cropped) tiles, so that the
    # tile counts are provably >= 2 and the graph holds no "one tile" guard (views and broadcasts
    # specialise on 1): one graph for every size.  Eager calls do not pay for them.
    spare = int(torch.compiler.is_compiling())
    th, tw = th + spare, tw + spare
    # Export fix: every tile's reflect-padded halo gathered by one flat index (no pad sized by max(), no
    # Tensor.unfold: they guard on or fix H and W in exported graphs), in the (tile, halo^2, E) order the
    # attention reads.  Positions past the padded map only feed padded queries, cropped below.
    kv = torch.cat([k, v], 2).reshape(n, e + hd, h * w).transpose(1, 2)
    kv = kv[:, _halo_index(h, w, pad, (th, tw), stride * t, halo, k.device)].flatten(0, 1)  # (n*tiles, halo^2, E+hd)
    qt = F.pad(q.reshape(n, e, ho, wo), (0, tw * t - wo, 0, th * t - ho))
    qt = qt.reshape(n, e, th, t, tw, t).permute(0, 2, 4, 3, 5, 1).reshape(n * th * tw, t * t, e)
    mask = _cached(_tile_mask, t, (halo, halo), key, q.device, q.dtype)
    out = _sdpa(qt, kv[..., :e], kv[..., e:], mask)  # (n*th*tw, t*t, hd)
    # Export fix: the ho x wo real queries picked out of the padded tiles by index (a slice would guard
    # on whether it crops anything, i.e. on H and W modulo the tile).
    i, j = torch.arange(ho, device=q.device).view(-1, 1), torch.arange(wo, device=q.device)
    keep = ((i // t * tw + j // t) * t + i % t) * t + j % t
    out = out.reshape(n, th * tw * t * t, hd).index_select(1, keep.reshape(-1))
    return out.transpose(1, 2).reshape(b, heads * hd, ho, wo)


def _attention_gather(q: Tensor, k: Tensor, v: Tensor, *, kernel: int, stride: int, dilation: int) -> Tensor:
    """Every query's ``kernel**2`` window keys gathered through reflect indices: ``kernel**2`` x the map."""
    b, heads, _, ho, wo = q.shape
    h, w = k.shape[-2:]
    pad = dilation * (kernel - 1) // 2
    offsets = torch.arange(kernel, device=k.device) * dilation

    def rows(n: int, no: int) -> Tensor:  # (no, kernel) source index of window position a of output i
        return reflect_index(n, pad, device=k.device)[(torch.arange(no, device=k.device) * stride)[:, None]
                                                       + offsets[None]]

    ri, ci = rows(h, ho), rows(w, wo)

    def windows(t: Tensor) -> Tensor:  # (B, heads, c, ho, kernel, wo, kernel)
        return t[..., ri, :][..., ci]

    logits = torch.einsum("bheij,bheiajc->bhijac", q, windows(k)).reshape(b, heads, ho, wo, kernel * kernel)
    att = torch.softmax(logits, -1).reshape(b, heads, ho, wo, kernel, kernel)
    out = torch.einsum("bhijac,bhdiajc->bhdij", att, windows(v))
    return out.reshape(b, heads * v.shape[2], ho, wo)


# ---------------------------------------------------------------- the layer


def acmix_fast(x: Tensor, w: ACmixWeights, cfg: ACmixConfig, backend: Backend = Backend.EAGER) -> Tensor:
    """ACmix forward with the rewrites; Stage II on ``backend`` (``EAGER``, ``CPU_KERNEL`` or ``TRITON``).

    Inputs are trusted: :func:`acmix.ops.acmix` validated them.
    """
    b, _, h, wd = x.shape
    heads, hd, c, s = cfg.heads, cfg.head_dim, cfg.out_channels, cfg.stride
    kernel = backend is Backend.CPU_KERNEL

    weight = torch.cat([w.q_weight, w.k_weight, w.v_weight])
    biases = (w.q_bias, w.k_bias, w.v_bias)
    bias = None
    if any(t is not None for t in biases):
        bias = torch.cat([t if t is not None else weight.new_zeros(c) for t in biases])
    if not kernel:  # channel order (d, which, head): the group conv's input layout
        weight = weight.reshape(3, heads, hd, -1).permute(2, 0, 1, 3).reshape(3 * c, -1, 1, 1)
        if bias is not None:
            bias = bias.reshape(3, heads, hd).permute(2, 0, 1).reshape(3 * c)
    qkv = F.conv2d(x, weight, bias)
    if backend is not Backend.TRITON:  # Triton reads any strides; the others want NCHW
        qkv = qkv.contiguous()

    conv_w = None
    if cfg.has_conv:
        fc = required(w.fc_weight, "fc_weight")
        full = _full_conv_weight(w.conv_weight, cfg.shift, out_channels=c, head_dim=hd, kernel=cfg.kernel_conv,
                                 like=fc)
        conv_w = _fold(full, fc)
    pe_w = None
    if cfg.has_attention and cfg.position_encoding:
        pe_w = required(w.pe_weight, "pe_weight").reshape(hd, 2)
        if w.pe_bias is not None:  # it cancels; a zero gradient keeps DDP's every-parameter check happy
            pe_w = pe_w + 0 * w.pe_bias.sum()
    args = {"scale": hd**-0.5, "kernel": cfg.kernel_att, "stride": s, "dilation": cfg.dilation}

    if kernel:
        one = qkv.new_ones(1)
        both = cfg.has_attention and cfg.has_conv
        rate_att = required(w.rate_att, "rate_att") if both else one
        rate_conv = required(w.rate_conv, "rate_conv") if both else one
        return native.stage2(qkv, heads=heads, pe_weight=pe_w, conv_weight=conv_w, conv_bias=w.conv_bias,
                             rate_att=rate_att, rate_conv=rate_conv, has_attention=cfg.has_attention,
                             kernel_att=cfg.kernel_att, kernel_conv=cfg.kernel_conv, stride=s,
                             dilation=cfg.dilation)

    conv = None
    if cfg.has_conv:
        conv_w = required(conv_w, "conv_weight").to(qkv.dtype)
        conv = F.conv2d(qkv, conv_w, w.conv_bias, stride=s, padding=cfg.kernel_conv // 2, groups=hd)
        if not cfg.has_attention:
            return conv
    q, k, v = qkv.view(b, hd, 3, heads, h, wd).permute(2, 0, 3, 1, 4, 5).unbind(0)  # (B, heads, hd, H, W)
    qs = q[..., ::s, ::s]
    r = None if pe_w is None else position_term(qs, pe_w, args["scale"])
    if backend is Backend.TRITON:  # the rate combination runs in the kernel's epilogue
        from .triton_attention import window_attention_triton

        if conv is None:
            return window_attention_triton(q, r, k, v, **args)
        return window_attention_triton(q, r, k, v, **args, conv=conv, rate_att=w.rate_att, rate_conv=w.rate_conv)
    att = attention_eager(qs.contiguous(), r, k, v, **args)
    return att if conv is None else blend(w, att, conv)
