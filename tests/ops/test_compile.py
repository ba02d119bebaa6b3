"""The layer under torch.compile: traced graphs take the eager path and match the reference."""

import torch
import torch.fx.experimental._config

from acmix import ACmix
from acmix.ops import acmix_reference


def test_torch_compile_forward_backward_matches_reference():
    torch.manual_seed(0)
    layer = ACmix(8, 16, stride=2, dtype=torch.float64)
    x = torch.randn(2, 8, 13, 12, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    (gx,) = torch.autograd.grad(out.sum(), x)
    x_ref = x.detach().requires_grad_()
    ref = acmix_reference(x_ref, layer.weights(), layer.config)
    (gx_ref,) = torch.autograd.grad(ref.sum(), x_ref)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)


def test_dynamic_compile_builds_one_graph_for_every_size():
    """``dynamic=True`` (duck sizing off, else a square first input makes dynamo assume H == W):
    new heights, widths and batch sizes, a map within one tile included, reuse the first graph."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    layer = ACmix(8, 8, dtype=torch.float64)
    compiled = torch.compile(layer, backend="aot_eager", dynamic=True, fullgraph=True)
    with torch.fx.experimental._config.patch(use_duck_shape=False):
        for b, h, w in [(2, 12, 12), (3, 15, 20), (2, 23, 9), (4, 5, 6)]:
            x = torch.randn(b, 8, h, w, dtype=torch.float64)
            torch.testing.assert_close(compiled(x), acmix_reference(x, layer.weights(), layer.config),
                                       rtol=1e-10, atol=1e-10)
    assert counters["stats"]["unique_graphs"] == 1
