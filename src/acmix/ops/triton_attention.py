"""ACmix's window attention as fused Triton kernels, forward and backward (CUDA; CPU through the interpreter).

Forward.  One program per (batch x head, 2-D tile of TH x TW output pixels).
The tile's queries sit at ``(i*s, j*s)`` of the full-resolution query map, so
stride 2 reads only the strided pixels.  The keys every query of the tile can
see form one halo of ``s*(TH-1) + dil*(k-1) + 1`` rows by as many columns of
the reflect-padded grid; the program loads that halo of k and v once, through
source indices it computes itself with the iterated reflection of
``common.reflect_index`` (a border key sits in the halo as often as the padding
repeats it, which is exactly the reference's multiplicity).  Nothing padded,
no mask and no multiplicity tensor exists in memory: the window mask of query
``(u, v)`` is "row offset from ``u*s`` in ``{0, dil, .., dil*(k-1)}``" and the
same for columns, evaluated from indices.  The position term is the rewrite
``logit = scale * q.k_j - r.loc_j`` with ``loc_j`` the location of the key's
*source* pixel, also computed from indices.  The whole window fits the halo
block, so the softmax is one-shot (no online rescaling); the program stores
the log-sum-exp per query for the backward.

Backward, deterministic and without atomics (the split of Triton's
fused-attention tutorial).  ``attention_bwd_query`` uses the forward's tiling,
recomputes ``P = exp(logit - lse)`` and writes dQ (at the strided pixels) and
dR; ``attention_bwd_key`` runs over tiles of the reflect-padded key grid, finds
the query rows and columns whose windows reach the tile, recomputes ``P``
transposed and writes dK, dV per *padded* position; gathers and sums in a fixed
order then fold the padded grid onto the source pixels (the reflect-pad
backward).  The dQ kernel also writes ``delta = dO . O = sum_j P_j (dO . v_j)``
for the dK/dV kernel, so the output itself is not kept for the backward: only
q, k, v (views of the input), r and the log-sum-exp are.  Optionally the
forward writes the layer's ``rate_att * attention + rate_conv * conv``
directly (the rates' gradients come from the same ``delta``).

Why exact: every logit, mask entry and location is the reference's, evaluated
in float32 (float64 for float64 inputs) with the softmax in that precision;
float32 dots on the GPU run as ``tf32x3`` (three TF32 products: float32-level
error on tensor cores), float64 and interpreted ones as ``ieee``.  Masked
entries are selected with ``tl.where`` and operands summed over the halo have
their non-finite entries zeroed (put back, by counting, only for the queries
whose window holds them), so a NaN or Inf pixel changes only the outputs whose
windows contain it.
See ``docs/fast-paths.md`` for the rewrites and how this path is dispatched.

The kernels (``triton_kernels.py``) are decorated when that module runs, and
Triton fixes compiled-vs-interpreted at that moment; :func:`_kernels` loads one
copy per mode, so CUDA tensors use compiled kernels and CPU tensors the
interpreter whenever ``TRITON_INTERPRET=1`` (the default test suite); with it
set, CUDA tensors are interpreted too, as Triton itself would.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .common import required

__all__ = ["available", "fits", "interpreting", "window_attention_triton"]

_KERNELS = Path(__file__).with_name("triton_kernels.py")
_lock = threading.Lock()
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# The tiles (pure Python, so that whether a shape fits is known without importing Triton).
# most (query, key) logits one program holds; larger tiles are pruned.  Registers, not shared memory, bound
# the tile: built for sm_90 (benchmarks/kernel_resources.py --tile 8x8x4 4x8x4), an 8x8 tile of kernel 7 at
# 4 warps (64 x 256 logits) spilled 0.5-4.6 KiB per thread in every kernel and stride-1 head dim, 4x8 (8,192)
# up to 13 KiB, while 4x4 (2,048) at 8 warps spills nothing in bf16/fp16 (tests/ops/test_triton.py) but at
# stride 2 and head dim 128, which MAX_TILE_BYTES gives to 4x2; 2x8 (--tile 2x8x8) spills 8-952 bytes at 128
MAX_LOGITS = 8192
# CUDA's cap on a grid's second dimension, where the kernels put batch x heads; past it they run on a 1-D grid
MAX_GRID_Y = 65535
# largest (rows x head dim) operand tile in bytes, for registers and shared memory alike (sm_90 builds, kernel 7
# at stride 2: 128 KiB tiles needed 272 KiB of shared memory, over the H100/H200 limit of 227 KiB; 64 KiB ones
# (bf16, head dim 128) fit it but spilled 208-360 bytes of registers, while the 32 KiB 4x2 tile spilled none)
MAX_TILE_BYTES = 32768
# the largest k/v operand tile whose program fits the shared memory of an sm_90 block (227 KiB): 64 KiB ones took
# up to 144 KiB (kernel_resources.py --dtype float64 float32 --tile 4x2x8), 128 KiB ones 272 KiB (--tile 8x8x4,
# stride 2, head dim 128).  A geometry whose smallest tile is over it (float64 at head dim 128, kernel 7) does not
# run; test_fits_matches_sm90_builds checks the line against builds on both sides.
SHARED_TILE_BYTES = 65536
# (TH, TW, num_warps); the first one kept is the one compiled when nothing is measured (ACMIX_AUTOTUNE=0).
# 8 warps beat 4 on registers at these tiles; 8x8 survives the pruning only for small kernels or the key side.
# One list for the query-side kernels (tiles of output pixels) and the key side (tiles of the padded grid).
TILES = [(4, 4, 8), (2, 8, 8), (4, 4, 4), (8, 8, 8), (4, 2, 8)]


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def block_d(head_dim: int) -> int:
    """The head dim inside the kernels: a power of two, at least 32 (``tl.dot`` needs 16; at 16, sm_90 builds
    of stage 1's default tile used 201-255 registers and the backward spilled 24-48 bytes, at 32 none spill,
    with 80-128: ``benchmarks/kernel_resources.py --min-block-d 16``)."""
    return max(32, _pow2(head_dim))


def _halo(tile: int, stride: int, extent: int) -> int:
    """Padded-grid rows that ``tile`` consecutive output rows read: ``stride*(tile-1) + extent + 1``."""
    return stride * (tile - 1) + extent + 1


def _span(tile: int, stride: int, extent: int) -> int:
    """Most output rows whose windows touch ``tile`` consecutive padded rows."""
    return (tile - 1 + extent) // stride + 1


def query_heuristics(args: dict[str, Any]) -> dict[str, int]:
    """Halo width and block sizes of a query-side tile (``TH``, ``TW``, ``KA``, ``S``, ``DIL`` in ``args``)."""
    e = args["DIL"] * (args["KA"] - 1)
    hh, hw = _halo(args["TH"], args["S"], e), _halo(args["TW"], args["S"], e)
    return {"HALO_W": hw, "BLOCK_K": _pow2(hh * hw), "BLOCK_Q": _pow2(args["TH"] * args["TW"])}


def key_heuristics(args: dict[str, Any]) -> dict[str, int]:
    """Query-span width and block sizes of a key-side tile of the padded grid."""
    e = args["DIL"] * (args["KA"] - 1)
    qh, qw = _span(args["TH"], args["S"], e), _span(args["TW"], args["S"], e)
    return {"SPAN_W": qw, "BLOCK_Q": _pow2(qh * qw), "BLOCK_K": _pow2(args["TH"] * args["TW"])}


@functools.cache  # asked on every call (dispatch, then the op's own check): a few integer operations, once
def fits(dtype: torch.dtype, head_dim: int, kernel: int, stride: int, dilation: int) -> bool:
    """Whether the compiled kernels run this geometry: the smallest tile's k/v operands, on the query and the
    key side, within :data:`SHARED_TILE_BYTES` (the interpreter has no such limit)."""
    th, tw, _ = min(TILES, key=lambda tile: tile[0] * tile[1])
    args = {"TH": th, "TW": tw, "KA": kernel, "S": stride, "DIL": dilation}
    rows = max(max(h["BLOCK_K"], h["BLOCK_Q"]) for h in (query_heuristics(args), key_heuristics(args)))
    return rows * block_d(head_dim) * dtype.itemsize <= SHARED_TILE_BYTES


_HAS_TRITON = importlib.util.find_spec("triton") is not None  # a constant: torch.compile traces through it


def interpreting() -> bool:
    """Whether CPU tensors run the kernels through Triton's interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpret_on(x: Tensor) -> bool:
    """Whether the kernels run on ``x`` through the interpreter (a CPU tensor, or ``TRITON_INTERPRET=1``)."""
    return x.device.type != "cuda" or interpreting()


def available(x: Tensor) -> bool:
    """Whether the Triton path can run on ``x``: Triton importable and ``x`` on CUDA, or a CPU tensor
    while :func:`interpreting`; floating dtypes only."""
    if x.dtype not in _DTYPES or not _HAS_TRITON:
        return False
    if x.device.type == "cuda":
        return True
    return x.device.type == "cpu" and interpreting()


@functools.cache
def _kernels(interpret: bool) -> ModuleType:
    """``triton_kernels.py`` executed with ``TRITON_INTERPRET`` set to ``interpret`` (a module per mode)."""
    with _lock:
        name = f"acmix.ops._triton_kernels_{'interpreted' if interpret else 'compiled'}"
        spec = importlib.util.spec_from_file_location(name, _KERNELS)
        assert spec is not None and spec.loader is not None  # a .py path always has both
        module = importlib.util.module_from_spec(spec)
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            spec.loader.exec_module(module)
        finally:
            if old is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = old
        sys.modules[name] = module
        return module


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _launch_args(q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, kernel: int, stride: int, dilation: int,
                 interpret: bool) -> tuple[tuple[int, ...], tuple[int, ...], dict[str, Any]]:
    """Pointers' strides, sizes and constexprs shared by the three kernels."""
    import triton.language as tl

    _, heads, hd, h, w = k.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    rs = r.stride() if r is not None else (0,) * 5
    strides = (*q.stride(), *rs, *k.stride(), *v.stride())
    meta = {"KA": kernel, "S": stride, "DIL": dilation, "HAS_R": r is not None,
            "ACC": tl.float64 if q.dtype == torch.float64 else tl.float32,
            # float32 on the GPU: three TF32 products per dot (float32-level error, tensor cores); the
            # plain "ieee" float32 dot runs on FMA units and takes minutes to compile at these tile sizes
            "PREC": "tf32x3" if q.dtype == torch.float32 and not interpret else "ieee",
            "BLOCK_D": block_d(hd), "FLAT": k.shape[0] * heads > MAX_GRID_Y}
    return strides, (heads, hd, h, w, ho, wo), meta


def _grid(n: int, rows: int, cols: int, flat: bool) -> Callable[[dict[str, Any]], tuple[int, ...]]:
    """One program per ``TH x TW`` tile of a ``rows x cols`` map and per (batch, head): ``(tiles, n)``, or
    ``(tiles * n,)`` where ``n`` is over :data:`MAX_GRID_Y` (``triton_kernels._program``)."""
    def grid(m: dict[str, Any]) -> tuple[int, ...]:
        tiles = -(-rows // m["TH"]) * -(-cols // m["TW"])
        return (tiles * n,) if flat else (tiles, n)
    return grid


def _split_heads(t: Tensor, hd: int) -> tuple[int, ...]:
    """Strides of ``(B, heads*hd, Ho, Wo)`` read as ``(B, heads, hd, Ho, Wo)``, without a copy."""
    sb, sc, sy, sx = t.stride()
    return sb, hd * sc, sc, sy, sx


@torch.library.custom_op("acmix::window_attention_triton", mutates_args=())
def _forward(q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, conv: Tensor | None, rate_att: Tensor | None,
             rate_conv: Tensor | None, scale: float, kernel: int, stride: int, dilation: int) -> tuple[Tensor, Tensor]:
    interpret = interpret_on(q)
    mod = _kernels(interpret)
    strides, sizes, meta = _launch_args(q, r, k, v, kernel, stride, dilation, interpret)
    heads, hd, _, _, ho, wo = sizes
    b = q.shape[0]
    acc = _acc(q.dtype)
    out = q.new_empty(b, heads * hd, ho, wo)
    lse = torch.empty(b * heads, ho, wo, device=q.device, dtype=acc)
    scale_t = torch.full((1,), scale, device=q.device, dtype=acc)
    mix = conv is not None
    rates = ((required(rate_att, "rate_att").to(acc), required(rate_conv, "rate_conv").to(acc)) if mix
             else (None, None))
    cstrides = _split_heads(conv, hd) if conv is not None else (0,) * 5
    mod.attention_fwd[_grid(b * heads, ho, wo, meta["FLAT"])](
        q, r, k, v, out, lse, scale_t, conv, *rates, *strides, *_split_heads(out, hd), *cstrides, *sizes,
        MIX=mix, **meta)
    return out, lse


@_forward.register_fake
def _(q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, conv: Tensor | None, rate_att: Tensor | None,
      rate_conv: Tensor | None, scale: float, kernel: int, stride: int, dilation: int) -> tuple[Tensor, Tensor]:
    b, heads, hd, h, w = k.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    return q.new_empty(b, heads * hd, ho, wo), q.new_empty(b * heads, ho, wo, dtype=_acc(q.dtype))


def _copies_index(sources: list[int], size: int) -> list[list[int]]:
    """``(size, m)``: the positions of ``sources`` (an axis of contributions, each naming its source pixel)
    that belong to each of ``size`` pixels, ``len(sources)`` (a zero slot the caller appends) filling the rows
    of pixels with fewer than ``m``."""
    copies = [[p for p, s in enumerate(sources) if s == i] for i in range(size)]
    m = max(1, max(len(c) for c in copies))
    return [c + [len(sources)] * (m - len(c)) for c in copies]


@functools.lru_cache(maxsize=256)
def _fold_indices(h: int, w: int, pad: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_copies_index` of the three folds of :func:`_fold` (once per size and device: a backward call
    builds no index)."""
    from .common import reflect_index

    src_r, src_c = reflect_index(h, pad).tolist(), reflect_index(w, pad).tolist()
    band_r, band_c = src_r[:pad] + src_r[pad + h:], src_c[:pad] + src_c[pad + w:]
    all_cols, band_rows, band_cols = (torch.tensor(_copies_index(s, n), device=device)
                                      for s, n in ((src_c, w), (band_r, h), (band_c, w)))
    return all_cols, band_rows, band_cols


def _sum_copies(t: Tensor, index: Tensor) -> Tensor:
    """Last axis of ``t`` summed onto the source pixels that ``index`` (a :func:`_copies_index`) names: gathers
    and sums in a fixed order (deterministic; a one-hot matrix product would spread ``0 * nan``)."""
    t = torch.nn.functional.pad(t, (0, 1))
    return t.index_select(-1, index.flatten()).view(*t.shape[:-1], *index.shape).sum(-1)


def _fold(own: Tensor, rows: Tensor, cols: Tensor, pad: int) -> Tensor:
    """The reflect-pad backward: ``own`` (``(n, c, H, W)``, the source pixels' own copies, updated in place)
    plus the band of reflected rows (``(n, c, 2 pad, W + 2 pad)``) and of reflected columns of the other rows
    (``(n, c, H, 2 pad)``) that ``attention_bwd_key`` wrote, added onto their source pixels."""
    h, w = own.shape[-2:]
    all_cols, band_rows, band_cols = _fold_indices(h, w, pad, own.device)
    rows = _sum_copies(rows, all_cols)  # (n, c, 2 pad, W): the band's columns onto source columns
    own += _sum_copies(rows.transpose(-1, -2), band_rows).transpose(-1, -2)
    own += _sum_copies(cols, band_cols)
    return own


@torch.library.custom_op("acmix::window_attention_triton_backward", mutates_args=())
def _backward_op(gout: Tensor, q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, lse: Tensor, conv: Tensor | None,
                 rate_att: Tensor | None, scale: float, kernel: int, stride: int,
                 dilation: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """dq, dr, dk, dv, ``delta`` (``go . attention`` per query) and, with ``conv``, ``go . conv`` per query."""
    interpret = interpret_on(q)
    mod = _kernels(interpret)
    strides, sizes, meta = _launch_args(q, r, k, v, kernel, stride, dilation, interpret)
    heads, hd, h, w, ho, wo = sizes
    b, n = q.shape[0], q.shape[0] * heads
    acc = _acc(q.dtype)
    delta = torch.empty(n, ho, wo, device=q.device, dtype=acc)  # written by the dQ kernel, read by the dK/dV one
    gs = _split_heads(gout, hd)
    scale_t = torch.full((1,), scale, device=q.device, dtype=acc)
    ra = rate_att.to(acc) if rate_att is not None else torch.ones(1, device=q.device, dtype=acc)
    args = (lse, delta, scale_t, ra)

    # dq is zero off the strided query pixels; dr is empty without a position term
    dq = (torch.zeros if stride > 1 else torch.empty)(q.shape, device=q.device, dtype=q.dtype)
    dr = torch.empty(r.shape, device=q.device, dtype=r.dtype) if r is not None else q.new_empty(0)
    drs = dr.stride() if r is not None else (0,) * 5
    mix = conv is not None
    gconv = torch.empty(n if mix else 0, ho, wo, device=q.device, dtype=acc)
    cstrides = _split_heads(conv, hd) if conv is not None else (0,) * 5
    mod.attention_bwd_query[_grid(n, ho, wo, meta["FLAT"])](
        q, r, k, v, gout, *args, dq, dr if r is not None else None, conv, gconv, *strides, *gs, *dq.stride(), *drs,
        *cstrides, *sizes, MIX=mix, **meta)

    pad = dilation * (kernel - 1) // 2
    hp, wp = h + 2 * pad, w + 2 * pad
    # every padded position written once: the source pixels' own copies and two bands of reflected ones
    own = [torch.empty(n, hd, h, w, device=q.device, dtype=acc) for _ in "kv"]
    rows = [torch.empty(n, hd, 2 * pad, wp, device=q.device, dtype=acc) for _ in "kv"]
    cols = [torch.empty(n, hd, h, 2 * pad, device=q.device, dtype=acc) for _ in "kv"]
    mod.attention_bwd_key[_grid(n, hp, wp, meta["FLAT"])](
        q, r, k, v, gout, *args, *own, *rows, *cols, *strides, *gs, *sizes, **meta)
    dk, dv = (_fold(*parts, pad).to(k.dtype).view(b, heads, hd, h, w) for parts in zip(own, rows, cols))
    return dq, dr, dk, dv, delta, gconv


@_backward_op.register_fake
def _(gout: Tensor, q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, lse: Tensor, conv: Tensor | None,
      rate_att: Tensor | None, scale: float, kernel: int, stride: int,
      dilation: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dr = torch.empty_like(r, memory_format=torch.contiguous_format) if r is not None else q.new_empty(0)
    gconv = torch.empty_like(lse) if conv is not None else lse.new_empty(0, *lse.shape[1:])
    return q.new_empty(q.shape), dr, k.new_empty(k.shape), v.new_empty(v.shape), torch.empty_like(lse), gconv


def _setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    q, r, k, v, conv, rate_att, rate_conv, scale, kernel, stride, dilation = inputs
    ctx.save_for_backward(q, r, k, v, output[1], conv, rate_att, rate_conv)  # not the output (dO . O comes from P)
    ctx.args = (scale, kernel, stride, dilation)


def _backward(ctx: Any, gout: Tensor, _glse: Tensor) -> tuple[Tensor | None, ...]:
    q, r, k, v, lse, conv, rate_att, rate_conv = ctx.saved_tensors
    dq, dr, dk, dv, delta, gconv = _backward_op(gout, q, r, k, v, lse, conv, rate_att, *ctx.args)
    grads = [dq, dr if r is not None else None, dk, dv, None, None, None]
    if conv is not None:  # out = ra * att + rc * conv; delta[i] = gout_i . att_i, gconv[i] = gout_i . conv_i
        grads[4:] = [(gout * rate_conv.to(gout.dtype)).to(conv.dtype), delta.sum().reshape(1).to(rate_att.dtype),
                     gconv.sum().reshape(1).to(rate_conv.dtype)]
    return (*grads, None, None, None, None)


_forward.register_autograd(_backward, setup_context=_setup)


def _check(q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, kernel: int, stride: int, dilation: int) -> None:
    if k.dim() != 5:
        raise ValueError(f"k must be 5-D (B, heads, head_dim, H, W), got shape {tuple(k.shape)}")
    if q.shape != k.shape or v.shape != k.shape:
        raise ValueError(f"q, k, v must share one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype or q.dtype not in _DTYPES:
        raise ValueError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    for name, val in (("kernel", kernel), ("stride", stride), ("dilation", dilation)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if kernel % 2 == 0:
        raise ValueError(f"kernel must be odd, got {kernel}")
    b, heads, _, h, w = k.shape
    want = (b, heads, 2, (h - 1) // stride + 1, (w - 1) // stride + 1)
    if r is not None and tuple(r.shape) != want:
        raise ValueError(f"r has shape {tuple(r.shape)}, expected {want}")


def window_attention_triton(q: Tensor, r: Tensor | None, k: Tensor, v: Tensor, *, scale: float, kernel: int,
                            stride: int, dilation: int, conv: Tensor | None = None, rate_att: Tensor | None = None,
                            rate_conv: Tensor | None = None) -> Tensor:
    """ACmix window attention on the Triton kernels: ``(B, heads*hd, Ho, Wo)``.

    The contract of :func:`acmix.ops.fast.attention_eager`, except that ``q`` is the
    *full-resolution* query map ``(B, heads, hd, H, W)`` like ``k`` and ``v``; the
    kernels read the strided pixels ``(i*stride, j*stride)``.  ``r`` (``(B, heads,
    2, Ho, Wo)`` or None) is the position term ``W_p^T (scale q)`` at those pixels.
    q, k, v, r may be any strided views (read in place).  Differentiable in q, r, k, v.

    With ``conv`` (the convolution path's output, ``(B, heads*hd, Ho, Wo)``, any strides) and the
    ``(1,)`` rates, the forward kernel writes the layer's ``rate_att * attention + rate_conv * conv``
    itself (differentiable in all three too): the attention output never exists in memory.
    """
    _check(q, r, k, v, kernel, stride, dilation)
    mixing = [t is not None for t in (conv, rate_att, rate_conv)]
    if any(mixing) and not all(mixing):
        raise ValueError("conv, rate_att and rate_conv go together: pass all three or none")
    b, heads, hd, h, w = k.shape
    want = (b, heads * hd, (h - 1) // stride + 1, (w - 1) // stride + 1)
    if conv is not None and rate_att is not None and rate_conv is not None and (
            tuple(conv.shape) != want or rate_att.shape != (1,) or rate_conv.shape != (1,)):
        raise ValueError(f"conv must be {want} and the rates (1,), got {tuple(conv.shape)}, "
                         f"{tuple(rate_att.shape)}, {tuple(rate_conv.shape)}")
    if not available(k):
        raise RuntimeError(f"acmix: the Triton attention cannot run on a {k.device.type} {k.dtype} tensor "
                           "(needs Triton and CUDA, or TRITON_INTERPRET=1 for CPU tensors)")
    if not interpret_on(k) and not fits(k.dtype, hd, kernel, stride, dilation):
        raise ValueError(f"acmix: the Triton attention cannot run head dim {hd} in {k.dtype} at kernel {kernel}, "
                         f"stride {stride}, dilation {dilation} (its smallest tile overflows shared memory); use "
                         "backend='eager'")
    if r is not None:
        r = r.to(q.dtype)
    out: Tensor = _forward(q, r, k, v, conv, rate_att, rate_conv, float(scale), kernel, stride, dilation)[0]
    return out
