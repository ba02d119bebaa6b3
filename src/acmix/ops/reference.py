"""The slow, obvious ACmix: the oracle every fast path is tested against.

It follows docs/operator.md literally, one window offset at a time, with no
algebraic rewrite: q, k, v from three 1x1 convolutions; keys, values and the
position encoding reflect-padded; logit(i, j) = q_i . (k_j + pe_i - pe_j);
softmax over the window; the convolution path as ``fc`` -> reorder ->
shift-and-sum.  It works in any dtype, float64 included.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import ACmixWeights, blend, check_input, check_weights, position_grid, reflect_pad, required
from .config import ACmixConfig, ShiftMode

__all__ = ["acmix_reference", "attention_path_reference", "conv_path_reference", "shift_conv_reference"]


def attention_path_reference(q: Tensor, k: Tensor, v: Tensor, w: ACmixWeights,
                             cfg: ACmixConfig) -> Tensor:
    """Local self-attention of docs/operator.md on the Stage-I maps q, k, v."""
    b, _, h, wd = q.shape
    heads, hd, s, dil, ka = cfg.heads, cfg.head_dim, cfg.stride, cfg.dilation, cfg.kernel_att
    ho, wo = cfg.output_size(h, wd)
    pad = cfg.att_padding

    q = (q * hd**-0.5).reshape(b, heads, hd, h, wd)[..., ::s, ::s]
    kp = reflect_pad(k.reshape(b, heads, hd, h, wd), pad)
    vp = reflect_pad(v.reshape(b, heads, hd, h, wd), pad)
    if cfg.position_encoding:
        loc = position_grid(h, wd, device=q.device, dtype=q.dtype)
        pe = F.conv2d(loc, required(w.pe_weight, "pe_weight"), w.pe_bias)  # (1, hd, H, W), shared by heads
        pe_q = pe[..., ::s, ::s].unsqueeze(1)
        pe_p = reflect_pad(pe, pad).unsqueeze(1)

    logits, values = [], []
    for a in range(ka):
        for c in range(ka):
            rows = slice(a * dil, a * dil + s * (ho - 1) + 1, s)
            cols = slice(c * dil, c * dil + s * (wo - 1) + 1, s)
            key = kp[..., rows, cols]
            if cfg.position_encoding:
                key = key + pe_q - pe_p[..., rows, cols]
            logits.append((q * key).sum(2))
            values.append(vp[..., rows, cols])
    att = torch.softmax(torch.stack(logits, 2), dim=2)  # (B, heads, ka*ka, Ho, Wo)
    out = cast(Tensor, sum(att[:, :, j].unsqueeze(2) * values[j] for j in range(ka * ka)))  # ka >= 1 terms
    return out.reshape(b, heads * hd, ho, wo)


def shift_conv_reference(pieces: Tensor, fc_weight: Tensor, conv_weight: Tensor | None,
                         conv_bias: Tensor | None = None, *, kernel_conv: int, out_channels: int,
                         stride: int = 1, shift: ShiftMode = ShiftMode.GROUPED,
                         fc_bias: Tensor | None = None) -> Tensor:
    """The convolution path on ``P`` feature pieces of ``D`` channels each.

    ``pieces`` is ``(B, P, D, H, W)``.  ``fc`` (``(k^2, P, 1, 1)``, optional bias)
    mixes the pieces per channel index; the result is reordered to channel
    ``d * k^2 + t`` and shifted and summed (``shift`` mode, zero padding, the
    output channel ``o`` reading group ``o // (out_channels / D)``).
    """
    b, p, d, h, wd = pieces.shape
    kc = kernel_conv
    f = torch.einsum("tp,bpdhw->bdthw", fc_weight.reshape(kc * kc, p), pieces)
    if fc_bias is not None:
        f = f + fc_bias.view(1, 1, kc * kc, 1, 1)
    f = f.reshape(b, d * kc * kc, h, wd)  # channel d*k^2 + t

    if shift is ShiftMode.GROUPED:
        out = F.conv2d(f, required(conv_weight, "conv_weight"), None, stride=stride, padding=kc // 2, groups=d)
    else:
        if shift is ShiftMode.TENSOR:
            fp = F.pad(f, [kc // 2] * 4).reshape(b, d, kc * kc, h + kc - 1, wd + kc - 1)
            out = cast(Tensor, sum(fp[:, :, t, t // kc:t // kc + h, t % kc:t % kc + wd]
                                   for t in range(kc * kc)))[..., ::stride, ::stride]
        else:
            out = F.conv2d(f, required(conv_weight, "conv_weight"), None, stride=stride, padding=kc // 2, groups=d)
        # output channel o belongs to group o // (C_out / D), as in the grouped conv
        out = out.repeat_interleave(out_channels // d, dim=1)
    if conv_bias is not None:
        out = out + conv_bias.view(1, -1, 1, 1)
    return out


def conv_path_reference(q: Tensor, k: Tensor, v: Tensor, w: ACmixWeights,
                        cfg: ACmixConfig) -> Tensor:
    """The convolution path: ``fc`` over the 3*heads pieces (q, k, v of every head)."""
    b, _, h, wd = q.shape
    pieces = torch.cat([t.reshape(b, cfg.heads, cfg.head_dim, h, wd) for t in (q, k, v)], 1)
    return shift_conv_reference(pieces, required(w.fc_weight, "fc_weight"), w.conv_weight, w.conv_bias,
                                kernel_conv=cfg.kernel_conv, out_channels=cfg.out_channels,
                                stride=cfg.stride, shift=cfg.shift)


def acmix_reference(x: Tensor, w: ACmixWeights, cfg: ACmixConfig) -> Tensor:
    """Reference ACmix forward: ``(B, C_in, H, W) -> (B, C_out, Ho, Wo)``."""
    check_weights(w, cfg)
    check_input(x, cfg, w)
    q = F.conv2d(x, w.q_weight, w.q_bias)
    k = F.conv2d(x, w.k_weight, w.k_bias)
    v = F.conv2d(x, w.v_weight, w.v_bias)
    if not cfg.has_conv:
        return attention_path_reference(q, k, v, w, cfg)
    if not cfg.has_attention:
        return conv_path_reference(q, k, v, w, cfg)
    return blend(w, attention_path_reference(q, k, v, w, cfg), conv_path_reference(q, k, v, w, cfg))
