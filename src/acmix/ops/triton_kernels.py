"""The Triton kernels of :mod:`acmix.ops.triton_attention` (design: that module's docstring).

This module imports Triton and decorates its kernels when it is executed, and
Triton decides *then* whether a kernel is compiled for the GPU or run by its
interpreter (``TRITON_INTERPRET``).  So :func:`acmix.ops.triton_attention._kernels`
executes it once per mode as a separate module object; do not import it directly.

Tensors are addressed as ``(batch, head, channel, y, x)`` through five strides
each, so q, k, v, r and the gradients are read and written in place.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

from acmix.ops.autotune import enabled as _measuring
from acmix.ops.triton_attention import MAX_LOGITS, MAX_TILE_BYTES, TILES
from acmix.ops.triton_attention import key_heuristics as _key_heuristics
from acmix.ops.triton_attention import query_heuristics as _query_heuristics

# ``triton.knobs`` (Triton >= 3.4) reads the variable; older releases read it themselves when decorating
_KNOB = getattr(getattr(getattr(triton, "knobs", None), "runtime", None), "interpret", None)
INTERPRET = bool(_KNOB) if _KNOB is not None else os.environ.get("TRITON_INTERPRET", "0") == "1"


def _each(heuristics, *names):
    """``triton.heuristics`` wants one function per meta-parameter."""
    return {name: (lambda args, name=name: heuristics(args)[name]) for name in names}


def _query_extent(args):
    return args["HO"], args["WO"]


def _key_extent(args):
    pad = args["DIL"] * (args["KA"] - 1) // 2
    return args["H"] + 2 * pad, args["W"] + 2 * pad


def _prune(heuristics, extent):
    """Drop the tiles whose logits overflow the registers (spills) or whose operands overflow shared memory
    (a config that fails to launch is skipped by the autotuner, but only after a compile of seconds), and a
    tile that covers the ``extent`` (the grid's map) in as many programs as a smaller one
    (small maps: the larger tile only computes padding), so fewer configs are compiled on a first call.
    With ``ACMIX_AUTOTUNE=0`` (the test suite's default) only the first tile kept is compiled: no benchmarking."""

    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        size = args["q_ptr"].element_size() if hasattr(args.get("q_ptr"), "element_size") else 4
        rows, cols = extent(args)
        fits = []
        best: dict[int, int] = {}
        for cfg in configs:
            blocks = heuristics({**args, **cfg.kwargs})
            if (blocks["BLOCK_K"] * blocks["BLOCK_Q"] <= MAX_LOGITS
                    and max(blocks["BLOCK_K"], blocks["BLOCK_Q"]) * args["BLOCK_D"] * size <= MAX_TILE_BYTES):
                th, tw = cfg.kwargs["TH"], cfg.kwargs["TW"]
                programs = -(-rows // th) * -(-cols // tw)
                if programs not in best or th * tw < best[programs]:
                    best[programs] = th * tw
                fits.append((cfg, programs, th * tw))
        kept = [cfg for cfg, programs, area in fits if best[programs] == area]
        kept = kept or [min(configs, key=lambda cfg: cfg.kwargs["TH"] * cfg.kwargs["TW"])]  # the smallest tile
        return kept if _measuring() else kept[:1]

    return prune


def _configs(tiles, interpreted):
    if INTERPRET:  # one fixed config, no benchmarking; big tiles, as the interpreter's cost is per program
        return [triton.Config({"TH": interpreted[0], "TW": interpreted[1]}, num_warps=4)]
    return [triton.Config({"TH": th, "TW": tw}, num_warps=nw) for th, tw, nw in tiles]


AUTOTUNE_KEY = ["H", "W", "HO", "WO", "HD", "KA", "S", "DIL"]


@triton.jit
def _reflect(p, size):
    """Source index of padded-axis position ``p`` (already shifted by -pad): iterated reflection."""
    period = tl.maximum(2 * (size - 1), 1)
    m = p % period
    m = tl.where(m < 0, m + period, m)  # C-style remainder on the GPU
    return tl.where(m >= size, period - m, m)


@triton.jit
def _location(src, size, ACC: tl.constexpr):
    """``src * 2/(size-1) - 1`` (-1 on a single-pixel axis), as ``common.position_grid``."""
    step = 2.0 / tl.maximum(size - 1, 1).to(ACC)
    return src.to(ACC) * step - 1.0


@triton.jit
def _in_window(rel, S: tl.constexpr, DIL: tl.constexpr, KA: tl.constexpr):
    """Whether padded offset ``rel`` (from the window's corner) is one of the ``KA`` taps."""
    return (rel >= 0) & (rel <= DIL * (KA - 1)) & (rel % DIL == 0)


# Reductions through ``tl.reduce`` with Triton's own combine functions: what ``tl.sum``/``tl.max`` do, but
# ``tl.sum`` and ``tl.max`` are themselves jit functions, decorated (compiled or interpreted) once when
# ``triton.language`` is first imported, so they would pin the mode; ``tl.reduce`` is a builtin.
@triton.jit
def _sum(x, axis):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _max(x, axis):
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@triton.jit
def _finite(x):
    return tl.abs(x) < float("inf")


@triton.jit
def _with_nonfinite(acc, mask, x):
    """``acc = sum_j w_ij x_j`` taken over finite ``x`` only, corrected to what the full sum is in IEEE
    arithmetic where row ``i``'s window (``mask``, weights > 0) holds a NaN or an infinity of ``x``.

    Counting with 0/1 matrices keeps ``0 * inf`` (keys of the halo outside the window) out of it.
    """
    m = mask.to(tl.float16)  # 0/1 in fp16, fp32 accumulation: exact counts on tensor cores
    n_nan = tl.dot(m, (x != x).to(tl.float16))
    n_pos = tl.dot(m, (x == float("inf")).to(tl.float16))
    n_neg = tl.dot(m, (x == float("-inf")).to(tl.float16))
    acc = tl.where(n_pos > 0, float("inf"), tl.where(n_neg > 0, float("-inf"), acc))
    return tl.where((n_nan > 0) | ((n_pos > 0) & (n_neg > 0)), float("nan"), acc)


@triton.jit
def _rows(ptr, base, d, sd, y, sy, x, sx, mask):
    """``(rows, BLOCK_D)`` block: pixel ``(y[i], x[i])``, channel ``d[j]`` (0 where masked)."""
    return tl.load(ptr + base + d[None, :] * sd + y[:, None] * sy + x[:, None] * sx, mask=mask, other=0.0)


@triton.jit
def _program(tiles, FLAT: tl.constexpr):
    """(tile, batch x head) of this program.  The grid is ``(tiles, B * heads)``, or with ``FLAT``, where ``B *
    heads`` passes the 65,535 that CUDA allows a grid's second dimension, one-dimensional: ``tiles`` programs
    per (batch, head) in a row.  Two forms because the division raised the common case's registers (sm_90
    builds of stage 1's forward)."""
    if FLAT:
        pid = tl.program_id(0)
        pid_n = pid // tiles
        pid_t = pid - pid_n * tiles
    else:
        pid_t = tl.program_id(0)
        pid_n = tl.program_id(1)
    return pid_t, pid_n.to(tl.int64)  # 64-bit offsets: batch x channels x pixels may pass 2^31


@triton.jit
def _query_tile(q_ptr, r_ptr, k_ptr, v_ptr, scale_ptr,
                sqb, sqh, sqd, sqy, sqx, srb, srh, src, sry, srx,
                skb, skh, skd, sky, skx, svb, svh, svd, svy, svx,
                HEADS, HD, H, W, HO, WO,
                KA: tl.constexpr, S: tl.constexpr, DIL: tl.constexpr, HAS_R: tl.constexpr, FLAT: tl.constexpr,
                ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_D: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                HALO_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr):
    """This program's query tile and its halo: indices, window mask, v, locations and the logits."""
    tiles_w = (WO + TW - 1) // TW
    pid_t, pid_n = _program(((HO + TH - 1) // TH) * tiles_w, FLAT)
    b = pid_n // HEADS
    hh = pid_n % HEADS
    ty = pid_t // tiles_w
    tx = pid_t % tiles_w
    pad = DIL * (KA - 1) // 2

    qi = tl.arange(0, BLOCK_Q)
    u = qi // TW
    w = qi % TW
    oy = ty * TH + u
    ox = tx * TW + w
    qvalid = (u < TH) & (oy < HO) & (ox < WO)
    d = tl.arange(0, BLOCK_D)
    dvalid = d < HD

    kk = tl.arange(0, BLOCK_K)
    kh = kk // HALO_W
    kw = kk % HALO_W
    kvalid = kh <= S * (TH - 1) + DIL * (KA - 1)
    sy = _reflect(ty * TH * S + kh - pad, H)
    sx = _reflect(tx * TW * S + kw - pad, W)
    mask = (_in_window(kh[None, :] - u[:, None] * S, S, DIL, KA)
            & _in_window(kw[None, :] - w[:, None] * S, S, DIL, KA) & kvalid[None, :])

    qmask = qvalid[:, None] & dvalid[None, :]
    kmask = kvalid[:, None] & dvalid[None, :]
    q = _rows(q_ptr, b * sqb + hh * sqh, d, sqd, oy * S, sqy, ox * S, sqx, qmask)
    k = _rows(k_ptr, b * skb + hh * skh, d, skd, sy, sky, sx, skx, kmask)
    v = _rows(v_ptr, b * svb + hh * svh, d, svd, sy, svy, sx, svx, kmask)
    scale = tl.load(scale_ptr).to(ACC)

    logits = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC) * scale
    lx = _location(sx, W, ACC)
    ly = _location(sy, H, ACC)
    if HAS_R:
        rbase = r_ptr + b * srb + hh * srh + oy * sry + ox * srx
        r0 = tl.load(rbase, mask=qvalid, other=0.0).to(ACC)
        r1 = tl.load(rbase + src, mask=qvalid, other=0.0).to(ACC)
        logits -= r0[:, None] * lx[None, :] + r1[:, None] * ly[None, :]
    return pid_n, b, hh, oy, ox, qvalid, d, qmask, mask, k, v, lx, ly, logits, scale


@triton.autotune(configs=_configs(TILES, (8, 8)), key=AUTOTUNE_KEY,
                 prune_configs_by={"early_config_prune": _prune(_query_heuristics, _query_extent)})
@triton.heuristics(_each(_query_heuristics, "HALO_W", "BLOCK_K", "BLOCK_Q"))
@triton.jit
def attention_fwd(q_ptr, r_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, scale_ptr, c_ptr, ra_ptr, rc_ptr,
                  sqb, sqh, sqd, sqy, sqx, srb, srh, src, sry, srx,
                  skb, skh, skd, sky, skx, svb, svh, svd, svy, svx,
                  sob, soh, sod, soy, sox, scb, sch, scd, scy, scx,
                  HEADS, HD, H, W, HO, WO, MIX: tl.constexpr,
                  KA: tl.constexpr, S: tl.constexpr, DIL: tl.constexpr, HAS_R: tl.constexpr, FLAT: tl.constexpr,
                  ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_D: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                  HALO_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr):
    """One TH x TW query tile of one (batch, head): logits over the halo, one-shot softmax, P @ V, LSE.

    With ``MIX`` it writes ``ra * attention + rc * conv`` (the layer's rate combination; ``conv`` read in place).
    """
    pid_n, b, hh, oy, ox, qvalid, d, qmask, mask, _k, v, _lx, _ly, logits, _scale = _query_tile(
        q_ptr, r_ptr, k_ptr, v_ptr, scale_ptr, sqb, sqh, sqd, sqy, sqx, srb, srh, src, sry, srx,
        skb, skh, skd, sky, skx, svb, svh, svd, svy, svx, HEADS, HD, H, W, HO, WO,
        KA, S, DIL, HAS_R, FLAT, ACC, PREC, BLOCK_D, TH, TW, HALO_W, BLOCK_K, BLOCK_Q)
    logits = tl.where(mask, logits, float("-inf"))
    m = _max(logits, 1)
    p = tl.where(mask, tl.exp(logits - m[:, None]), 0.0)
    denom = _sum(p, 1)

    fin = _finite(v)
    acc = tl.dot(p.to(v.dtype), tl.where(fin, v, 0.0).to(v.dtype), input_precision=PREC).to(ACC)
    if _sum(tl.where(fin, 0, 1), None) > 0:  # a non-finite value only reaches the queries whose window holds it
        acc = _with_nonfinite(acc, mask, v)
    out = acc / denom[:, None]
    if MIX:
        conv = _rows(c_ptr, b * scb + hh * sch, d, scd, oy, scy, ox, scx, qmask).to(ACC)
        out = tl.load(ra_ptr).to(ACC) * out + tl.load(rc_ptr).to(ACC) * conv
    tl.store(o_ptr + b * sob + hh * soh + d[None, :] * sod + oy[:, None] * soy + ox[:, None] * sox,
             out.to(o_ptr.dtype.element_ty), mask=qmask)
    tl.store(lse_ptr + pid_n * HO * WO + oy * WO + ox, (m + tl.log(denom)).to(lse_ptr.dtype.element_ty),
             mask=qvalid)


@triton.autotune(configs=_configs(TILES, (8, 8)), key=AUTOTUNE_KEY,
                 prune_configs_by={"early_config_prune": _prune(_query_heuristics, _query_extent)})
@triton.heuristics(_each(_query_heuristics, "HALO_W", "BLOCK_K", "BLOCK_Q"))
@triton.jit
def attention_bwd_query(q_ptr, r_ptr, k_ptr, v_ptr, go_ptr, lse_ptr, delta_ptr, scale_ptr, ra_ptr, dq_ptr, dr_ptr,
                        c_ptr, gc_ptr,
                        sqb, sqh, sqd, sqy, sqx, srb, srh, src, sry, srx,
                        skb, skh, skd, sky, skx, svb, svh, svd, svy, svx,
                        sgb, sgh, sgd, sgy, sgx, s1b, s1h, s1d, s1y, s1x, s2b, s2h, s2c, s2y, s2x,
                        scb, sch, scd, scy, scx,
                        HEADS, HD, H, W, HO, WO, MIX: tl.constexpr,
                        KA: tl.constexpr, S: tl.constexpr, DIL: tl.constexpr, HAS_R: tl.constexpr, FLAT: tl.constexpr,
                        ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_D: tl.constexpr, TH: tl.constexpr,
                        TW: tl.constexpr, HALO_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr):
    """dQ (at the strided query pixels; strides ``s1*``), dR (strides ``s2*``) and ``delta`` of one query tile.

    ``go`` is the gradient of the output the forward wrote; the attention's own is ``ra * go`` (``ra`` = 1
    without the rate combination), so ``delta`` is ``go . attention``, the rate's gradient per query.  With
    ``MIX``, ``gc`` gets ``go . conv`` per query, the convolution rate's (``conv`` read in place, strides
    ``sc*``): no full-size float32 product of the two exists.
    """
    pid_n, b, hh, oy, ox, qvalid, d, qmask, mask, k, v, lx, ly, logits, scale = _query_tile(
        q_ptr, r_ptr, k_ptr, v_ptr, scale_ptr, sqb, sqh, sqd, sqy, sqx, srb, srh, src, sry, srx,
        skb, skh, skd, sky, skx, svb, svh, svd, svy, svx, HEADS, HD, H, W, HO, WO,
        KA, S, DIL, HAS_R, FLAT, ACC, PREC, BLOCK_D, TH, TW, HALO_W, BLOCK_K, BLOCK_Q)
    go = _rows(go_ptr, b * sgb + hh * sgh, d, sgd, oy, sgy, ox, sgx, qmask)
    lse = tl.load(lse_ptr + pid_n * HO * WO + oy * WO + ox, mask=qvalid, other=0.0).to(ACC)
    p = tl.where(mask, tl.exp(logits - lse[:, None]), 0.0)
    dp = tl.dot(go, tl.trans(v.to(go.dtype)), input_precision=PREC).to(ACC)
    # delta = dO . O = sum_j p_j (dO . v_j): no need to keep the output for the backward
    delta = _sum(tl.where(mask, p * dp, 0.0), 1)
    tl.store(delta_ptr + pid_n * HO * WO + oy * WO + ox, delta.to(delta_ptr.dtype.element_ty), mask=qvalid)
    ds = tl.where(mask, p * (dp - delta[:, None]), 0.0) * tl.load(ra_ptr).to(ACC)
    kc = tl.where(_finite(k), k, 0.0).to(k.dtype)  # the halo's other keys meet ds == 0: keep 0 * inf out of the sum
    dq = tl.dot(ds.to(k.dtype), kc, input_precision=PREC).to(ACC) * scale
    tl.store(dq_ptr + b * s1b + hh * s1h + d[None, :] * s1d + (oy * S)[:, None] * s1y + (ox * S)[:, None] * s1x,
             dq.to(dq_ptr.dtype.element_ty), mask=qmask)
    if HAS_R:
        dbase = dr_ptr + b * s2b + hh * s2h + oy * s2y + ox * s2x
        tl.store(dbase, (-_sum(ds * lx[None, :], 1)).to(dr_ptr.dtype.element_ty), mask=qvalid)
        tl.store(dbase + s2c, (-_sum(ds * ly[None, :], 1)).to(dr_ptr.dtype.element_ty), mask=qvalid)
    if MIX:
        conv = _rows(c_ptr, b * scb + hh * sch, d, scd, oy, scy, ox, scx, qmask)
        tl.store(gc_ptr + pid_n * HO * WO + oy * WO + ox, _sum(go.to(ACC) * conv.to(ACC), 1), mask=qvalid)


@triton.autotune(configs=_configs(TILES, (16, 16)), key=AUTOTUNE_KEY,
                 prune_configs_by={"early_config_prune": _prune(_key_heuristics, _key_extent)})
@triton.heuristics(_each(_key_heuristics, "SPAN_W", "BLOCK_Q", "BLOCK_K"))
@triton.jit
def attention_bwd_key(q_ptr, r_ptr, k_ptr, v_ptr, go_ptr, lse_ptr, delta_ptr, scale_ptr, ra_ptr, dk_ptr, dv_ptr,
                      rk_ptr, rv_ptr, ck_ptr, cv_ptr,
                      sqb, sqh, sqd, sqy, sqx, srb, srh, src, sry, srx,
                      skb, skh, skd, sky, skx, svb, svh, svd, svy, svx,
                      sgb, sgh, sgd, sgy, sgx,
                      HEADS, HD, H, W, HO, WO,
                      KA: tl.constexpr, S: tl.constexpr, DIL: tl.constexpr, HAS_R: tl.constexpr, FLAT: tl.constexpr,
                      ACC: tl.constexpr, PREC: tl.constexpr, BLOCK_D: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                      SPAN_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr):
    """dK, dV of one TH x TW tile of the reflect-padded key grid, over every query whose window holds it.

    Each padded position is written once, by one program: the ``H x W`` positions of the source pixels'
    own copies to ``dk``/``dv`` (``(B*heads, HD, H, W)``), the bands of reflected copies to ``rk``/``rv``
    (the ``2 pad`` padded rows outside them, full width: ``(B*heads, HD, 2 pad, Wp)``) and ``ck``/``cv``
    (the ``2 pad`` padded columns outside them, of the other rows: ``(B*heads, HD, H, 2 pad)``), all
    contiguous; the caller adds the bands onto their source pixels.
    """
    pad = DIL * (KA - 1) // 2
    hp = H + 2 * pad
    wp = W + 2 * pad
    tiles_w = (wp + TW - 1) // TW
    pid_t, pid_n = _program(((hp + TH - 1) // TH) * tiles_w, FLAT)
    b = pid_n // HEADS
    hh = pid_n % HEADS
    py0 = (pid_t // tiles_w) * TH
    px0 = (pid_t % tiles_w) * TW
    ext = DIL * (KA - 1)

    kk = tl.arange(0, BLOCK_K)
    py = py0 + kk // TW
    px = px0 + kk % TW
    kvalid = (kk < TH * TW) & (py < hp) & (px < wp)
    sy = _reflect(py - pad, H)
    sx = _reflect(px - pad, W)
    d = tl.arange(0, BLOCK_D)
    dvalid = d < HD

    # the first query row / column whose window reaches this tile
    oy0 = tl.where(py0 > ext, (py0 - ext + S - 1) // S, 0)
    ox0 = tl.where(px0 > ext, (px0 - ext + S - 1) // S, 0)
    qi = tl.arange(0, BLOCK_Q)
    oy = oy0 + qi // SPAN_W
    ox = ox0 + qi % SPAN_W
    qvalid = (qi // SPAN_W <= (TH - 1 + ext) // S) & (oy < HO) & (ox < WO)
    mask = (_in_window(py[:, None] - oy[None, :] * S, S, DIL, KA)
            & _in_window(px[:, None] - ox[None, :] * S, S, DIL, KA) & kvalid[:, None] & qvalid[None, :])

    kmask = kvalid[:, None] & dvalid[None, :]
    k = _rows(k_ptr, b * skb + hh * skh, d, skd, sy, sky, sx, skx, kmask)
    v = _rows(v_ptr, b * svb + hh * svh, d, svd, sy, svy, sx, svx, kmask)
    qmask = qvalid[:, None] & dvalid[None, :]
    q = _rows(q_ptr, b * sqb + hh * sqh, d, sqd, oy * S, sqy, ox * S, sqx, qmask)
    go = _rows(go_ptr, b * sgb + hh * sgh, d, sgd, oy, sgy, ox, sgx, qmask)
    lse = tl.load(lse_ptr + pid_n * HO * WO + oy * WO + ox, mask=qvalid, other=0.0).to(ACC)
    delta = tl.load(delta_ptr + pid_n * HO * WO + oy * WO + ox, mask=qvalid, other=0.0).to(ACC)
    scale = tl.load(scale_ptr).to(ACC)

    logits = tl.dot(k, tl.trans(q), input_precision=PREC).to(ACC) * scale  # (keys, queries)
    if HAS_R:
        rbase = r_ptr + b * srb + hh * srh + oy * sry + ox * srx
        r0 = tl.load(rbase, mask=qvalid, other=0.0).to(ACC)
        r1 = tl.load(rbase + src, mask=qvalid, other=0.0).to(ACC)
        logits -= _location(sx, W, ACC)[:, None] * r0[None, :] + _location(sy, H, ACC)[:, None] * r1[None, :]
    p = tl.where(mask, tl.exp(logits - lse[None, :]), 0.0)

    gfin = _finite(go)
    dv = tl.dot(p.to(go.dtype), tl.where(gfin, go, 0.0).to(go.dtype), input_precision=PREC).to(ACC)
    if _sum(tl.where(gfin, 0, 1), None) > 0:  # a non-finite output gradient reaches only its window's values
        dv = _with_nonfinite(dv, mask, go)
    ra = tl.load(ra_ptr).to(ACC)
    dv = dv * ra
    dp = tl.dot(v.to(go.dtype), tl.trans(go), input_precision=PREC).to(ACC)
    ds = tl.where(mask, p * (dp - delta[None, :]), 0.0) * ra
    dk = tl.dot(ds.to(q.dtype), tl.where(_finite(q), q, 0.0).to(q.dtype), input_precision=PREC).to(ACC) * scale

    ry = py - pad
    rx = px - pad
    own = (ry >= 0) & (ry < H) & (rx >= 0) & (rx < W)
    row_band = (ry < 0) | (ry >= H)
    col_band = ~own & ~row_band
    dd = d[None, :].to(tl.int64)
    out = pid_n * HD * H * W + dd * (H * W) + (ry * W + rx)[:, None]
    tl.store(dk_ptr + out, dk.to(dk_ptr.dtype.element_ty), mask=kmask & own[:, None])
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=kmask & own[:, None])
    out = pid_n * HD * 2 * pad * wp + dd * (2 * pad * wp) + (tl.where(ry < 0, py, py - H) * wp + px)[:, None]
    tl.store(rk_ptr + out, dk.to(rk_ptr.dtype.element_ty), mask=kmask & row_band[:, None])
    tl.store(rv_ptr + out, dv.to(rv_ptr.dtype.element_ty), mask=kmask & row_band[:, None])
    out = pid_n * HD * H * 2 * pad + dd * (H * 2 * pad) + (ry * 2 * pad + tl.where(rx < 0, px, px - W))[:, None]
    tl.store(ck_ptr + out, dk.to(ck_ptr.dtype.element_ty), mask=kmask & col_band[:, None])
    tl.store(cv_ptr + out, dv.to(cv_ptr.dtype.element_ty), mask=kmask & col_band[:, None])
