"""The authors' algorithm: every attention window materialised with ``unfold``.

Kept as the baseline the benchmarks compare against (docs/fast-paths.md: ~49x the
activation memory per unfold).  It computes the same function as the
reference wherever ``ReflectionPad2d`` is defined (maps larger than the
padding); it is not used by the layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import ACmixWeights, blend, check_input, position_grid, required
from .config import ACmixConfig
from .reference import conv_path_reference

__all__ = ["acmix_unfold"]


def _attention_unfold(q: Tensor, k: Tensor, v: Tensor, w: ACmixWeights, cfg: ACmixConfig) -> Tensor:
    b, c, h, wd = q.shape
    heads, hd, ka = cfg.heads, cfg.head_dim, cfg.kernel_att
    ho, wo = cfg.output_size(h, wd)
    pad = [cfg.att_padding] * 4

    def windows(t: Tensor) -> Tensor:
        cols = F.unfold(F.pad(t, pad, mode="reflect"), ka, dilation=cfg.dilation, stride=cfg.stride)
        return cols.view(t.shape[0], hd, ka * ka, ho, wo)

    q = (q * hd**-0.5).reshape(b * heads, hd, h, wd)[..., :: cfg.stride, :: cfg.stride]
    key = windows(k.reshape(b * heads, hd, h, wd))
    if cfg.position_encoding:
        pe = F.conv2d(position_grid(h, wd, device=q.device, dtype=q.dtype), required(w.pe_weight, "pe_weight"),
                      w.pe_bias)
        key = key + pe[..., :: cfg.stride, :: cfg.stride].unsqueeze(2) - windows(pe)
    att = torch.softmax((q.unsqueeze(2) * key).sum(1), dim=1)
    out = (att.unsqueeze(1) * windows(v.reshape(b * heads, hd, h, wd))).sum(2)
    return out.reshape(b, c, ho, wo)


def acmix_unfold(x: Tensor, w: ACmixWeights, cfg: ACmixConfig) -> Tensor:
    check_input(x, cfg)
    q = F.conv2d(x, w.q_weight, w.q_bias)
    k = F.conv2d(x, w.k_weight, w.k_bias)
    v = F.conv2d(x, w.v_weight, w.v_bias)
    parts = []
    if cfg.has_attention:
        parts.append(_attention_unfold(q, k, v, w, cfg))
    if cfg.has_conv:
        parts.append(conv_path_reference(q, k, v, w, cfg))
    if len(parts) == 1:
        return parts[0]
    return blend(w, parts[0], parts[1])
