"""The layer under torch.compile: traced graphs take the eager path and match the reference."""

import torch

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
