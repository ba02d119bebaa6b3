"""The reference itself, checked against a per-pixel brute force and the unfold form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from acmix.ops import acmix_reference, acmix_unfold, position_grid, reflect_index
from helpers import CASE_IDS, CASES, make_layer


def _reflect(i: int, n: int) -> int:
    # single reflection, valid while the padding is smaller than the axis
    if i < 0:
        return -i
    if i >= n:
        return 2 * (n - 1) - i
    return i


def brute_force(layer, x):
    """ACmix written pixel by pixel from docs/operator.md (tiny shapes only)."""
    cfg = layer.config
    w = layer.weights()
    b, _, h, wd = x.shape
    heads, hd, ka, kc, s, dil = cfg.heads, cfg.head_dim, cfg.kernel_att, cfg.kernel_conv, cfg.stride, cfg.dilation
    ho, wo = cfg.output_size(h, wd)
    q = torch.einsum("oc,bchw->bohw", w.q_weight[:, :, 0, 0], x) + w.q_bias.view(1, -1, 1, 1)
    k = torch.einsum("oc,bchw->bohw", w.k_weight[:, :, 0, 0], x) + w.k_bias.view(1, -1, 1, 1)
    v = torch.einsum("oc,bchw->bohw", w.v_weight[:, :, 0, 0], x) + w.v_bias.view(1, -1, 1, 1)
    out = torch.zeros(b, cfg.out_channels, ho, wo, dtype=x.dtype)
    pad = cfg.att_padding

    def pe(y, xx):
        loc = torch.tensor([-1 + 2 * xx / max(wd - 1, 1), -1 + 2 * y / max(h - 1, 1)], dtype=x.dtype)
        return w.pe_weight[:, :, 0, 0] @ loc + w.pe_bias

    if cfg.has_attention:
        att = torch.zeros_like(out)
        for n in range(b):
            for hh in range(heads):
                ch = slice(hh * hd, (hh + 1) * hd)
                for i in range(ho):
                    for j in range(wo):
                        qi = q[n, ch, i * s, j * s] * hd**-0.5
                        logits, vals = [], []
                        for a in range(ka):
                            for c in range(ka):
                                y = _reflect(i * s + a * dil - pad, h)
                                xx = _reflect(j * s + c * dil - pad, wd)
                                key = k[n, ch, y, xx]
                                if cfg.position_encoding:
                                    key = key + pe(i * s, j * s) - pe(y, xx)
                                logits.append((qi * key).sum())
                                vals.append(v[n, ch, y, xx])
                        p = torch.softmax(torch.stack(logits), 0)
                        att[n, ch, i, j] = (p[:, None] * torch.stack(vals)).sum(0)
    if cfg.has_conv:
        conv = torch.zeros_like(out)
        pieces = [t[:, hh * hd:(hh + 1) * hd] for t in (q, k, v) for hh in range(heads)]
        fc = w.fc_weight[:, :, 0, 0]
        f = [sum(fc[t, p] * pieces[p] for p in range(3 * heads)) for t in range(kc * kc)]  # (B, hd, H, W)
        per = cfg.out_channels // hd
        for o in range(cfg.out_channels):
            d = o // per
            kern = w.conv_weight[o if cfg.shift.value == "grouped" else d] if w.conv_weight is not None else None
            for i in range(ho):
                for j in range(wo):
                    acc = torch.zeros(b, dtype=x.dtype)
                    for t in range(kc * kc):
                        for u in range(kc):
                            for vv in range(kc):
                                y, xx = i * s + u - kc // 2, j * s + vv - kc // 2
                                if not (0 <= y < h and 0 <= xx < wd):
                                    continue
                                wt = kern[t, u, vv] if kern is not None else float(t == u * kc + vv)
                                acc = acc + wt * f[t][:, d, y, xx]
                    conv[:, o, i, j] = acc
        if w.conv_bias is not None:
            conv = conv + w.conv_bias.view(1, -1, 1, 1)
    if not cfg.has_conv:
        return att
    if not cfg.has_attention:
        return conv
    return w.rate_att * att + w.rate_conv * conv


SMALL = [(entry, size, b) for entry, size, b in CASES]


@pytest.mark.parametrize(("entry", "size", "batch"), SMALL, ids=CASE_IDS)
def test_reference_matches_brute_force(entry, size, batch):
    layer = make_layer(entry, seed=1)
    h, w = size
    pad = layer.config.att_padding
    if pad >= min(h, w):  # the brute force knows single reflection only
        h, w = max(h, pad + 1), max(w, pad + 1)
    x = torch.randn(min(batch, 2), entry[0], h, w, dtype=torch.float64)
    torch.testing.assert_close(acmix_reference(x, layer.weights(), layer.config), brute_force(layer, x),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("entry", "size", "batch"), CASES, ids=CASE_IDS)
def test_unfold_form_matches_reference(entry, size, batch):
    """The authors' unfold algorithm computes the same function (maps larger than the padding)."""
    layer = make_layer(entry, seed=2)
    h, w = size
    pad = layer.config.att_padding
    h, w = max(h, pad + 1), max(w, pad + 1)
    x = torch.randn(batch, entry[0], h, w, dtype=torch.float64)
    torch.testing.assert_close(acmix_unfold(x, layer.weights(), layer.config),
                               acmix_reference(x, layer.weights(), layer.config), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 12])
@pytest.mark.parametrize("pad", [0, 1, 3, 6])
def test_reflect_index(n, pad):
    idx = reflect_index(n, pad)
    assert idx.shape == (n + 2 * pad,)
    assert int(idx.min()) >= 0 and int(idx.max()) < n
    assert idx[pad:pad + n].tolist() == list(range(n))
    if pad < n:  # exactly ReflectionPad where that is defined
        ref = F.pad(torch.arange(n, dtype=torch.float64).view(1, 1, n), (pad, pad), mode="reflect")
        assert idx.tolist() == ref.view(-1).long().tolist()
    else:  # iterated reflection: every step moves by exactly one pixel (or stays, for n == 1)
        steps = (idx[1:] - idx[:-1]).abs()
        assert int(steps.max()) <= 1


def test_position_grid():
    g = position_grid(3, 5, dtype=torch.float64)
    assert g.shape == (1, 2, 3, 5)
    torch.testing.assert_close(g[0, 0, 1], torch.linspace(-1, 1, 5, dtype=torch.float64))
    torch.testing.assert_close(g[0, 1, :, 2], torch.linspace(-1, 1, 3, dtype=torch.float64))
    one = position_grid(1, 1, dtype=torch.float32)
    assert one.tolist() == [[[[-1.0]], [[-1.0]]]]
    assert position_grid(2, 2, dtype=torch.float16).dtype == torch.float16
