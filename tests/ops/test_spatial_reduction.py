"""PVT spatial-reduction attention: the fast op against the obvious reference (float64)."""

from __future__ import annotations

import pytest
import torch

from acmix.ops.spatial_reduction import (
    SRAWeights,
    spatial_reduction_attention,
    spatial_reduction_attention_reference,
    sra_project,
)

# (B, C, heads, H, W, sr_ratio, prefix tokens)
CASES = [
    (2, 8, 2, 8, 8, 4, 0),
    (1, 6, 3, 7, 9, 2, 0),  # odd sizes: the reduction drops the last row / column
    (2, 8, 1, 4, 4, 4, 0),  # reduced to a single token
    (1, 8, 4, 3, 5, 1, 0),  # no reduction
    (2, 4, 2, 2, 3, 1, 1),  # class token in front (PVT's last stage)
]
IDS = [f"b{b}c{c}h{h}_{hh}x{w}_sr{r}_p{p}" for b, c, h, hh, w, r, p in CASES]


def _make(case, seed=0, proj=True):
    b, c, heads, h, w, r, p = case
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).requires_grad_()

    weights = SRAWeights(rnd(c, c), rnd(c), rnd(2 * c, c), rnd(2 * c),
                         rnd(c, c, r, r) if r > 1 else None, rnd(c) if r > 1 else None,
                         rnd(c) if r > 1 else None, rnd(c) if r > 1 else None,
                         rnd(c, c) if proj else None, rnd(c) if proj else None)
    x = rnd(b, p + h * w, c)
    return x, weights, dict(heads=heads, sr_ratio=r)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fast_matches_reference_values_and_grads(case):
    x, w, kw = _make(case)
    size = case[3:5]
    out = spatial_reduction_attention(x, size, w, **kw)
    ref, q_r, k_r, v_r = spatial_reduction_attention_reference(x, size, w, return_qkv=True, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(sra_project(x, size, w, **kw), (q_r, k_r, v_r)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    leaves = [x] + [t for t in w if t is not None]
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, leaves, g), torch.autograd.grad(ref, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=[IDS[1], IDS[4]])
def test_gradcheck(case):
    x, w, kw = _make(case, proj=False)
    size = case[3:5]
    names = [i for i, t in enumerate(w) if t is not None]

    def fn(x, *ts):
        full = list(w)
        for i, t in zip(names, ts):
            full[i] = t
        return spatial_reduction_attention(x, size, SRAWeights(*full), **kw)

    assert torch.autograd.gradcheck(fn, (x, *[w[i] for i in names]), fast_mode=True)


def test_errors():
    x, w, kw = _make(CASES[0])
    with pytest.raises(ValueError, match="not divisible by heads"):
        spatial_reduction_attention(x, (8, 8), w, heads=3, sr_ratio=4)
    with pytest.raises(ValueError, match="sr_weight must have shape"):
        spatial_reduction_attention(x, (8, 8), w, heads=2, sr_ratio=2)
    with pytest.raises(ValueError, match="does not fit"):
        spatial_reduction_attention(x, (9, 8), w, **kw)
    x2 = torch.cat([x[:, :1], x], 1)
    with pytest.raises(ValueError, match="prefix tokens need sr_ratio=1"):
        spatial_reduction_attention(x2, (8, 8), w, **kw)
