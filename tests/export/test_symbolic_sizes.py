"""The eager path that traced graphs take at symbolic sizes (tiled attention at every size) is exact."""

from __future__ import annotations

import pytest
import torch

from acmix import ACmix
from acmix.ops import fast
from acmix.ops.common import reflect_index, reflect_positions
from helpers import randomize_

# (in, out, heads, kernel_att, stride, dilation, size, batch): 1-pixel and tiny maps, ragged tiles
CASES = [
    (4, 8, 2, 7, 1, 1, (1, 5), 1),
    (4, 8, 2, 7, 2, 1, (2, 3), 3),
    (4, 8, 4, 3, 2, 2, (6, 15), 1),
    (6, 8, 2, 5, 1, 1, (9, 16), 3),
    (6, 8, 2, 7, 2, 1, (17, 8), 1),
]


@pytest.mark.parametrize("case", CASES, ids=[f"s{c[4]}-d{c[5]}-{c[6][0]}x{c[6][1]}-b{c[7]}" for c in CASES])
def test_tiled_path_matches_reference(case, monkeypatch):
    ci, co, heads, ka, s, d, (h, w), b = case
    layer = randomize_(ACmix(ci, co, heads=heads, kernel_att=ka, stride=s, dilation=d, dtype=torch.float64))
    x = torch.randn(b, ci, h, w, dtype=torch.float64, requires_grad=True)
    ref = layer.__class__(ci, co, heads=heads, kernel_att=ka, stride=s, dilation=d, dtype=torch.float64,
                          backend="reference")
    ref.load_state_dict(layer.state_dict())
    want = ref(x)
    g_want = torch.autograd.grad(want.square().sum(), [x, *ref.parameters()])
    monkeypatch.setattr(fast, "static_sizes", lambda *sizes: False)  # as under torch.export: tiled at every size
    layer.backend = "eager"
    got = layer(x)
    g_got = torch.autograd.grad(got.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for a, e in zip(g_got, g_want):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("size", "pad"), [(1, 3), (2, 3), (3, 1), (5, 6), (9, 3)])
def test_reflect_positions_extends_reflect_index(size, pad):
    pos = torch.arange(-pad, size + pad + 2 * size + 3)
    got = reflect_positions(pos, size)
    assert torch.equal(got[: size + 2 * pad], reflect_index(size, pad))
    assert got.min() >= 0 and got.max() < size  # past the padded map: still a valid pixel
