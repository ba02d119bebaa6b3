"""Every fast path against the reference: values and all gradients, float64 and float32."""

from __future__ import annotations

import pytest
import torch

from acmix import ACmix
from acmix.ops import Backend, acmix, acmix_reference, native, resolve_backend, shift_conv, use_backend
from acmix.ops import fast as fast_mod
from acmix.ops.config import ShiftMode
from acmix.ops.reference import attention_path_reference, conv_path_reference, shift_conv_reference
from helpers import CASE_IDS, CASES, make_layer

# (backend, eager attention form): the eager path has a dense-global form (small maps) and a tiled one
PATHS = [(Backend.EAGER, "global"), (Backend.EAGER, "tiled"), (Backend.COMPILED, None)]
PATH_IDS = ["eager-global", "eager-tiled", "compiled"]


@pytest.fixture(params=PATHS, ids=PATH_IDS)
def path(request, monkeypatch):
    backend, form = request.param
    if backend is Backend.COMPILED:
        request.getfixturevalue("native_kernel")  # built once per session; skips without a compiler
    if form == "tiled":
        monkeypatch.setattr(fast_mod, "GLOBAL_MAX", 0)
        monkeypatch.setattr(fast_mod, "TILE", 3)  # several tiles even on small maps, ragged edges
    return backend


def _run(layer, x, backend, go):
    params = list(layer.parameters())
    if backend is Backend.REFERENCE:
        out = acmix_reference(x, layer.weights(), layer.config)
    else:
        out = acmix(x, layer.weights(), layer.config, backend=backend)
    grads = torch.autograd.grad(out, [x, *params], go, allow_unused=True)
    return out, [torch.zeros_like(p) if g is None else g for g, p in zip(grads, [x, *params])]


def _compare(entry, size, batch, backend, dtype, seed):
    layer = make_layer(entry, seed=seed, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, entry[0], *size, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    ho, wo = layer.config.output_size(*size)
    go = torch.randn(batch, entry[1], ho, wo, generator=g, dtype=torch.float64).to(dtype)
    out, grads = _run(layer, x, backend, go)
    ref_layer = make_layer(entry, seed=seed, dtype=torch.float64)
    ref_layer.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})  # the same rounded weights
    x64 = x.detach().double().requires_grad_()
    ref, ref_grads = _run(ref_layer, x64, Backend.REFERENCE, go.double())
    return out, grads, ref, ref_grads


@pytest.mark.parametrize(("entry", "size", "batch"), CASES, ids=CASE_IDS)
def test_fast_matches_reference_float64(path, entry, size, batch):
    out, grads, ref, ref_grads = _compare(entry, size, batch, path, torch.float64, seed=11)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    # the floor keeps a gradient that is zero in exact arithmetic (conv_p.bias) from dividing by noise
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()


def _rate_scales(entry, size, batch, seed):
    """Sum of |terms| of each rate's gradient, sum |gout * path|: the scale a float32 dot product is exact to."""
    layer = make_layer(entry, seed=seed, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, entry[0], *size, generator=g, dtype=torch.float64)
    ho, wo = layer.config.output_size(*size)
    go = torch.randn(batch, entry[1], ho, wo, generator=g, dtype=torch.float64)
    ref = make_layer(entry, seed=seed, dtype=torch.float64)
    ref.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    q, k, v = ref.conv1(x), ref.conv2(x), ref.conv3(x)
    w, cfg = ref.weights(), ref.config
    return {"rate1": (go.abs() * attention_path_reference(q, k, v, w, cfg).abs()).sum().item(),
            "rate2": (go.abs() * conv_path_reference(q, k, v, w, cfg).abs()).sum().item()}


@pytest.mark.parametrize(("entry", "size", "batch"), CASES[::2], ids=CASE_IDS[::2])
def test_fast_matches_reference_float32(path, entry, size, batch):
    """Relative error <= 1e-5 for values and every gradient.

    Relative to the largest magnitude; for the rates' gradients, which are dot
    products over every output with heavy cancellation, relative to the sum of
    the magnitudes of their terms (the scale float32 summation is exact to).
    """
    out, grads, ref, ref_grads = _compare(entry, size, batch, path, torch.float32, seed=12)
    assert _rel_err(out, ref) <= 1e-5
    names = ["x"] + [n for n, _ in make_layer(entry).named_parameters()]
    scales = _rate_scales(entry, size, batch, seed=12) if "rate1" in names else {}
    for name, g, r in zip(names, grads, ref_grads):
        if name in scales:
            assert (g.double() - r).abs().item() / scales[name] <= 1e-5, name
        else:
            assert _rel_err(g, r) <= 1e-5, name


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (2, 3), (3, 3), (6, 2)])
@pytest.mark.parametrize(("stride", "dilation"), [(1, 1), (2, 1), (1, 2)])
def test_fast_tiny_maps(path, size, stride, dilation):
    entry = (4, 8, 2, 7, 3, stride, dilation, {})
    out, grads, ref, ref_grads = _compare(entry, size, 2, path, torch.float64, seed=13)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shift", list(ShiftMode))
@pytest.mark.parametrize(("kc", "stride", "fc_bias", "conv_bias"), [(3, 1, True, False), (5, 2, False, True),
                                                                   (1, 2, True, True)])
def test_shift_conv_fast_matches_reference(shift, kc, stride, fc_bias, conv_bias):
    g = torch.Generator().manual_seed(1)
    b, p, d, h, w, out_ch = 2, 6, 3, 7, 6, 9
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    pieces = r(b, p, d, h, w).requires_grad_()
    fc_w = r(kc * kc, p, 1, 1).requires_grad_()
    conv_shape = {ShiftMode.GROUPED: (out_ch, kc * kc, kc, kc)}.get(shift, (d, kc * kc, kc, kc))
    conv_w = None if shift is ShiftMode.TENSOR else r(*conv_shape).requires_grad_()
    fb = r(kc * kc).requires_grad_() if fc_bias else None
    cb = r(out_ch).requires_grad_() if conv_bias else None
    kw = {"kernel_conv": kc, "out_channels": out_ch, "stride": stride, "shift": shift, "fc_bias": fb}
    inputs = [t for t in (pieces, fc_w, conv_w, fb, cb) if t is not None]
    out = shift_conv(pieces, fc_w, conv_w, cb, **kw)
    ref = shift_conv_reference(pieces, fc_w, conv_w, cb, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    go = r(*out.shape)
    for a, e in zip(torch.autograd.grad(out, inputs, go), torch.autograd.grad(ref, inputs, go)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_dispatcher_choices_and_context():
    x = torch.randn(1, 4, 5, 5)
    layer = ACmix(4, 8)
    assert resolve_backend(x, layer.config) is Backend.EAGER  # small map: dense attention
    expect = Backend.COMPILED if native.available() else Backend.EAGER
    assert resolve_backend(torch.randn(1, 4, 28, 28), layer.config) is expect
    assert resolve_backend(torch.randn(1, 4, 14, 14), layer.config) is expect
    assert resolve_backend(torch.randn(1, 4, 8, 8), layer.config) is Backend.EAGER
    assert resolve_backend(x.to(torch.bfloat16), layer.config) is Backend.EAGER
    with use_backend("reference"):
        assert resolve_backend(x, layer.config) is Backend.REFERENCE
        with use_backend(Backend.EAGER):
            assert resolve_backend(x, layer.config) is Backend.EAGER
        assert resolve_backend(x, layer.config) is Backend.REFERENCE
    assert resolve_backend(x, layer.config, "eager") is Backend.EAGER
    with pytest.raises(ValueError, match="backend='cpu_kernel' runs float32/float64 CPU tensors"):
        resolve_backend(x.half(), layer.config, Backend.COMPILED)
    with pytest.raises(ValueError, match="backend='gpu' is not one of"), use_backend("gpu"):
        pass


@pytest.mark.parametrize("backend", [Backend.EAGER, Backend.AUTO])
def test_fast_low_precision_and_autocast(backend):
    layer = make_layer((8, 16, 4, 7, 3, 2, 1, {}), seed=3, dtype=torch.float32)
    x = torch.randn(2, 8, 15, 13, requires_grad=True)
    ref = acmix_reference(x.double(), make_layer((8, 16, 4, 7, 3, 2, 1, {}), seed=3).weights(), layer.config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = acmix(x, layer.weights(), layer.config, backend=backend)
    assert out.dtype == torch.bfloat16  # the autocast dtype, not float32 from the rates (docs/operator.md)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert _rel_err(out.float(), ref) < 0.03
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_backend(x, layer.config) is Backend.EAGER  # the kernel is float32/float64 only
        with pytest.raises(ValueError, match="outside autocast"):
            acmix(x, layer.weights(), layer.config, backend=Backend.COMPILED)
    half = make_layer((8, 16, 4, 7, 3, 2, 1, {}), seed=3, dtype=torch.float16)
    out16 = acmix(x.detach().half(), half.weights(), half.config, backend=Backend.EAGER)
    assert out16.dtype == torch.float16 and _rel_err(out16.float(), ref) < 0.03
