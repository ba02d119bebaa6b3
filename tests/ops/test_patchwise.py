"""SAN patchwise aggregation: the fast form against the pixel-by-pixel reference (float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from acmix.ops.patchwise import patchwise_aggregation, patchwise_aggregation_reference, reflect_windows

# (B, C, Cw, H, W, kernel, stride, dilation)
CASES = [
    (2, 8, 1, 5, 6, 3, 1, 1),
    (1, 16, 2, 7, 7, 7, 1, 1),  # SAN's 7x7 at its smallest 224 map
    (2, 6, 3, 9, 5, 3, 2, 1),  # odd sizes, stride
    (1, 4, 4, 6, 8, 3, 1, 2),  # dilation, no sharing
    (1, 8, 2, 1, 1, 7, 1, 1),  # one pixel: the window repeats it
    (2, 4, 2, 2, 3, 7, 1, 1),  # map smaller than the padding: iterated reflection
]
IDS = [f"b{b}c{c}w{cw}_{h}x{w}_k{k}s{s}d{d}" for b, c, cw, h, w, k, s, d in CASES]


def _inputs(case, seed=0, requires_grad=False):
    b, c, cw, h, w, k, s, d = case
    g = torch.Generator().manual_seed(seed)
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    v = torch.randn(b, c, h, w, generator=g, dtype=torch.float64, requires_grad=requires_grad)
    wt = torch.randn(b, cw, k * k, ho, wo, generator=g, dtype=torch.float64, requires_grad=requires_grad)
    return v, wt, dict(kernel_size=k, stride=s, dilation=d)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fast_matches_reference_values_and_grads(case):
    v, wt, kw = _inputs(case, requires_grad=True)
    out = patchwise_aggregation(v, wt, **kw)
    ref = patchwise_aggregation_reference(v, wt, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (v, wt), g)
    grads_ref = torch.autograd.grad(ref, (v, wt), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[5]], ids=[IDS[0], IDS[2], IDS[5]])
def test_gradcheck(case):
    v, wt, kw = _inputs(case, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: patchwise_aggregation(a, b, **kw), (v, wt), fast_mode=True)


def test_matches_unfold_with_reflection_pad():
    """Where ReflectionPad2d is defined the op equals SAN's unfold formulation."""
    b, c, cw, h, w, k = 2, 8, 2, 9, 10, 7
    v, wt, kw = _inputs((b, c, cw, h, w, k, 1, 1))
    cols = F.unfold(F.pad(v, [k // 2] * 4, mode="reflect"), k).view(b, c // cw, cw, k * k, h, w)
    expect = (cols * wt.unsqueeze(1)).sum(3).reshape(b, c, h, w)
    torch.testing.assert_close(patchwise_aggregation(v, wt, **kw), expect)


def test_sharing_is_tiled():
    """Channel c reads weight channel c % Cw (SAN's kernel), not c // share."""
    v = torch.zeros(1, 4, 3, 3, dtype=torch.float64)
    v[0, 1] = 1.0  # only channel 1 is non-zero
    wt = torch.zeros(1, 2, 9, 3, 3, dtype=torch.float64)
    wt[0, 1, 4] = 2.0  # centre tap of weight channel 1
    out = patchwise_aggregation(v, wt, kernel_size=3)
    assert torch.all(out[0, 1] == 2.0) and torch.all(out[0, [0, 2, 3]] == 0.0)


def test_reflect_windows_matches_unfold_order():
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64)
    win = reflect_windows(x, 3).reshape(2, 27, 8 * 9)
    torch.testing.assert_close(win, F.unfold(F.pad(x, [1] * 4, mode="reflect"), 3))


def test_low_precision_and_errors():
    v, wt, kw = _inputs(CASES[0])
    out = patchwise_aggregation(v.float(), wt.float(), **kw)
    torch.testing.assert_close(out.double(), patchwise_aggregation_reference(v, wt, **kw), rtol=1e-5, atol=1e-5)
    assert patchwise_aggregation(v.bfloat16(), wt.bfloat16(), **kw).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        patchwise_aggregation(v, wt, kernel_size=4)
    with pytest.raises(ValueError, match="weight has shape"):
        patchwise_aggregation(v, wt[:, :, :4], **kw)
    with pytest.raises(ValueError, match="C % Cw"):
        patchwise_aggregation(v, wt.repeat(1, 3, 1, 1, 1), **kw)  # C=8 channels, Cw=3


def test_export_keeps_height_and_width_independent():
    """An exported program of the op runs at a taller map than its example: the input checks compare no size
    with another (``min(c, h, w)`` guarded SAN's programs on the example's H <= W)."""
    from acmix.export import export_program

    class Aggregate(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, _, h, w = x.shape
            weight = x[:, :2].repeat(1, 1, 9, 1, 1).reshape(b, 2, 9, h, w)
            return patchwise_aggregation(x, weight, kernel_size=3)

    program = export_program(Aggregate(), torch.randn(2, 16, 6, 9))  # more channels than pixels a side
    taller = torch.randn(1, 16, 11, 5)
    torch.testing.assert_close(program.module()(taller), Aggregate()(taller))
