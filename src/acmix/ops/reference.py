"""The slow, obvious ACmix: the oracle every fast path is tested against.

It follows SPEC section 1 literally, one window offset at a time, with no
algebraic rewrite: q, k, v from three 1x1 convolutions; keys, values and the
position encoding reflect-padded; logit(i, j) = q_i . (k_j + pe_i - pe_j);
softmax over the window; the convolution path as ``fc`` -> reorder ->
shift-and-sum.  It works in any dtype, float64 included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import ACmixWeights, check_input, check_weights, position_grid, reflect_index
from .config import ACmixConfig, ShiftMode

__all__ = ["acmix_reference", "attention_path_reference", "conv_path_reference"]


def _pad_reflect(t: Tensor, pad: int) -> Tensor:
    """Reflect-pad the last two axes by ``pad`` (iterated reflection on tiny maps)."""
    ih = reflect_index(t.shape[-2], pad, device=t.device)
    iw = reflect_index(t.shape[-1], pad, device=t.device)
    return t.index_select(-2, ih).index_select(-1, iw)


def attention_path_reference(q: Tensor, k: Tensor, v: Tensor, w: ACmixWeights,
                             cfg: ACmixConfig) -> Tensor:
    """Local self-attention of SPEC section 1 on the Stage-I maps q, k, v."""
    b, _, h, wd = q.shape
    heads, hd, s, dil, ka = cfg.heads, cfg.head_dim, cfg.stride, cfg.dilation, cfg.kernel_att
    ho, wo = cfg.output_size(h, wd)
    pad = cfg.att_padding

    q = (q * hd**-0.5).reshape(b, heads, hd, h, wd)[..., ::s, ::s]
    kp = _pad_reflect(k.reshape(b, heads, hd, h, wd), pad)
    vp = _pad_reflect(v.reshape(b, heads, hd, h, wd), pad)
    if cfg.position_encoding:
        loc = position_grid(h, wd, device=q.device, dtype=q.dtype)
        pe = F.conv2d(loc, w.pe_weight, w.pe_bias)  # (1, hd, H, W), shared by heads
        pe_q = pe[..., ::s, ::s].unsqueeze(1)
        pe_p = _pad_reflect(pe, pad).unsqueeze(1)

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
    out = sum(att[:, :, j].unsqueeze(2) * values[j] for j in range(ka * ka))
    return out.reshape(b, heads * hd, ho, wo)


def conv_path_reference(q: Tensor, k: Tensor, v: Tensor, w: ACmixWeights,
                        cfg: ACmixConfig) -> Tensor:
    """The convolution path: ``fc`` over the 3*heads pieces, then shift and sum."""
    b, _, h, wd = q.shape
    heads, hd, kc, s = cfg.heads, cfg.head_dim, cfg.kernel_conv, cfg.stride
    ho, wo = cfg.output_size(h, wd)
    pieces = torch.cat([t.reshape(b, heads, hd, h * wd) for t in (q, k, v)], 1)
    f = torch.einsum("tp,bpdn->btdn", w.fc_weight.reshape(kc * kc, 3 * heads), pieces)
    f = f.permute(0, 2, 1, 3).reshape(b, hd * kc * kc, h, wd)  # channel d*k^2 + t

    if cfg.shift is ShiftMode.GROUPED:
        out = F.conv2d(f, w.conv_weight, None, stride=s, padding=kc // 2, groups=hd)
    else:
        if cfg.shift is ShiftMode.TENSOR:
            fp = F.pad(f, [kc // 2] * 4).reshape(b, hd, kc * kc, h + kc - 1, wd + kc - 1)
            out = sum(fp[:, :, t, t // kc:t // kc + h, t % kc:t % kc + wd]
                      for t in range(kc * kc))[..., ::s, ::s]
        else:
            out = F.conv2d(f, w.conv_weight, None, stride=s, padding=kc // 2, groups=hd)
        # output channel o belongs to group o // (C_out / head_dim), as in the grouped conv
        out = out.repeat_interleave(cfg.out_channels // hd, dim=1)
    if w.conv_bias is not None:
        out = out + w.conv_bias.view(1, -1, 1, 1)
    assert out.shape[-2:] == (ho, wo)
    return out


def acmix_reference(x: Tensor, w: ACmixWeights, cfg: ACmixConfig) -> Tensor:
    """Reference ACmix forward: ``(B, C_in, H, W) -> (B, C_out, Ho, Wo)``."""
    check_input(x, cfg)
    check_weights(w, cfg)
    q = F.conv2d(x, w.q_weight, w.q_bias)
    k = F.conv2d(x, w.k_weight, w.k_bias)
    v = F.conv2d(x, w.v_weight, w.v_bias)
    if not cfg.has_conv:
        return attention_path_reference(q, k, v, w, cfg)
    if not cfg.has_attention:
        return conv_path_reference(q, k, v, w, cfg)
    return (w.rate_att * attention_path_reference(q, k, v, w, cfg)
            + w.rate_conv * conv_path_reference(q, k, v, w, cfg))
