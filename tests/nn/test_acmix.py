"""The ACmix module: exactness against the reference, options, dtypes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from acmix import ACmix
from acmix.ops import Backend, acmix_reference, acmix_unfold
from acmix.ops.reference import attention_path_reference, conv_path_reference
from helpers import CASE_IDS, CASES, make_layer


def _grads(out, inputs, seed=3):
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, go, allow_unused=True)


@pytest.mark.parametrize(("entry", "size", "batch"), CASES, ids=CASE_IDS)
def test_module_matches_reference_values_and_grads(entry, size, batch):
    layer = make_layer(entry, seed=4)
    x = torch.randn(batch, entry[0], *size, dtype=torch.float64, requires_grad=True)
    params = [p for p in layer.parameters()]
    out = layer(x)
    grads = _grads(out, [x, *params])

    ref_params = [p.detach().clone().requires_grad_() for p in params]
    ref = make_layer(entry, seed=4)
    with torch.no_grad():
        for p, q in zip(ref.parameters(), ref_params):
            p.copy_(q)
    x_ref = x.detach().clone().requires_grad_()
    out_ref = acmix_reference(x_ref, ref.weights(), ref.config)
    ref_grads = _grads(out_ref, [x_ref, *ref.parameters()])
    assert out.shape == (batch, entry[1], *layer.config.output_size(*size))
    torch.testing.assert_close(out, out_ref, rtol=1e-12, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("ka", "kc", "stride", "dil", "size", "kw"), [
    (3, 3, 1, 1, (4, 5), {}),
    (3, 3, 2, 1, (5, 4), {"conv_bias": True}),
    (3, 1, 1, 2, (3, 3), {"shift": "learnable"}),
    (5, 3, 2, 1, (2, 3), {}),  # map smaller than the padding
])
def test_gradcheck(ka, kc, stride, dil, size, kw):
    layer = ACmix(3, 4, heads=2, kernel_att=ka, kernel_conv=kc, stride=stride, dilation=dil,
                  dtype=torch.float64, **kw)
    x = torch.randn(2, 3, *size, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(layer.parameters())

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6)


def _shifted_sum(f, kc):
    """Sum of the k^2 maps f[:, :, t] shifted by offset t, zero filled (torch.roll on a padded map)."""
    p = kc // 2
    fp = F.pad(f, [p, p, p, p])
    total = 0
    for t in range(kc * kc):
        dy, dx = t // kc - p, t % kc - p
        total = total + torch.roll(fp[:, :, t], shifts=(-dy, -dx), dims=(-2, -1))
    return total[..., p:fp.shape[-2] - p, p:fp.shape[-1] - p]


@pytest.mark.parametrize("kc", [1, 3, 5])
def test_shift_init_is_sum_of_shifted_fc_outputs(kc):
    layer = ACmix(6, 8, heads=4, kernel_conv=kc, combination="conv", dtype=torch.float64)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    q, k, v = layer.conv1(x), layer.conv2(x), layer.conv3(x)
    hd = layer.config.head_dim
    pieces = torch.cat([t.reshape(2, 4, hd, 63) for t in (q, k, v)], 1)
    f = layer.fc(pieces)  # (B, k^2, hd, HW)
    f = f.reshape(2, kc * kc, hd, 7, 9).transpose(1, 2)  # (B, hd, k^2, H, W)
    expect = _shifted_sum(f, kc).repeat_interleave(8 // hd, dim=1)
    torch.testing.assert_close(layer(x), expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_shift_modes_agree_at_init(stride):
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64)
    base = ACmix(5, 8, heads=2, stride=stride, shift="tensor", dtype=torch.float64)
    outs = [base(x)]
    for shift in ("fixed", "learnable", "grouped"):
        layer = ACmix(5, 8, heads=2, stride=stride, shift=shift, dtype=torch.float64)
        missing, unexpected = layer.load_state_dict(base.state_dict(), strict=False)
        assert not unexpected and len(missing) == 1  # only the shift kernel, left at its init
        outs.append(layer(x))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-12, atol=1e-12)


def test_single_path_modes_equal_their_path():
    torch.manual_seed(0)
    full = make_layer((5, 8, 4, 7, 3, 2, 1, {}), seed=7)
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    q, k, v = full.conv1(x), full.conv2(x), full.conv3(x)
    w, cfg = full.weights(), full.config
    for mode, path in (("attention", attention_path_reference), ("conv", conv_path_reference)):
        single = ACmix(5, 8, stride=2, combination=mode, dtype=torch.float64)
        missing, _ = single.load_state_dict(full.state_dict(), strict=False)
        assert not missing
        torch.testing.assert_close(single(x), path(q, k, v, w, cfg), rtol=1e-12, atol=1e-12)


def test_fixed_rates_are_buffers():
    layer = ACmix(4, 8, combination="fixed", rates=(0.25, 2.0))
    names = {n for n, _ in layer.named_parameters()}
    assert "rate1" not in names and "rate2" not in names
    assert layer.rate1.item() == 0.25 and layer.rate2.item() == 2.0
    assert "rate1" in layer.state_dict()


def _authors_state_dict(cin, cout, heads=4, ka=7, kc=3):
    hd = cout // heads
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    sd = {}
    for n in ("conv1", "conv2", "conv3"):
        sd[f"{n}.weight"], sd[f"{n}.bias"] = r(cout, cin, 1, 1), r(cout)
    sd["conv_p.weight"], sd["conv_p.bias"] = r(hd, 2, 1, 1), r(hd)
    sd["fc.weight"] = r(kc * kc, 3 * heads, 1, 1)
    sd["dep_conv.weight"] = r(cout, kc * kc, kc, kc)
    sd["rate1"], sd["rate2"] = r(1), r(1)
    return sd


@pytest.mark.parametrize("stride", [1, 2])
def test_authors_state_dict_loads_strictly_and_matches_their_algorithm(stride):
    sd = _authors_state_dict(16, 32)
    layer = ACmix(16, 32, stride=stride)
    layer.load_state_dict(sd, strict=True)
    assert set(layer.state_dict()) == set(sd)
    x = torch.randn(2, 16, 14, 14)
    with torch.no_grad():
        expect = acmix_unfold(x.double(), layer.double().weights(), layer.config).float()
        layer.float()
        # float32 rounding: a few ulps of the output's scale
        torch.testing.assert_close(layer(x), expect, rtol=1e-5, atol=4e-6 * expect.abs().max().item())


def test_parameter_count_formula():
    cin, cout, heads, kc = 64, 64, 4, 3
    layer = ACmix(cin, cout, heads=heads, kernel_conv=kc)
    hd = cout // heads
    expect = 3 * cin * cout + 3 * cout + 3 * hd + 3 * heads * kc**2 + cout * kc**4 + 2
    assert sum(p.numel() for p in layer.parameters()) == expect


def test_reset_parameters_restores_shift_init():
    layer = ACmix(4, 8, heads=2)
    shift = layer.dep_conv.weight.detach().clone()
    assert shift.sum() == 8 * 9 and ((shift == 0) | (shift == 1)).all()
    with torch.no_grad():
        layer.dep_conv.weight.normal_()
        layer.rate1.fill_(3.0)
    layer.reset_parameters()
    torch.testing.assert_close(layer.dep_conv.weight, shift)
    assert layer.rate1.item() == 0.5 and layer.rate2.item() == 0.5
    assert layer.dep_conv.bias is None


@pytest.mark.parametrize("size", [(1, 1), (1, 4), (2, 2), (3, 2), (4, 6)])
@pytest.mark.parametrize("stride", [1, 2])
def test_tiny_maps(size, stride):
    layer = make_layer((4, 8, 4, 7, 3, stride, 1, {}), seed=5)
    x = torch.randn(2, 4, *size, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.shape == (2, 8, (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_single_pixel_attention_returns_value():
    layer = make_layer((4, 8, 4, 7, 3, 1, 1, {"combination": "attention"}), seed=6)
    x = torch.randn(3, 4, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(layer(x), layer.conv3(x), rtol=1e-12, atol=1e-12)


def test_channels_last_input():
    layer = make_layer((4, 8, 4, 7, 3, 2, 1, {}), seed=8, dtype=torch.float32)
    x = torch.randn(2, 4, 9, 10)
    out = layer(x)
    out_cl = layer(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_module_dtype(dtype):
    layer32 = make_layer((8, 16, 4, 7, 3, 1, 1, {}), seed=9, dtype=torch.float32)
    x = torch.randn(2, 8, 10, 10)
    ref = layer32(x)
    layer = make_layer((8, 16, 4, 7, 3, 1, 1, {}), seed=9, dtype=dtype)
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


def test_bf16_autocast_cpu():
    layer = make_layer((8, 16, 4, 7, 3, 2, 1, {}), seed=9, dtype=torch.float32)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.cuda
def test_cuda_matches_cpu():
    layer = make_layer((8, 16, 4, 7, 3, 2, 1, {}), seed=10)
    x = torch.randn(2, 8, 11, 9, dtype=torch.float64)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), layer.cpu()(x))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"in_channels": 4, "out_channels": 6, "heads": 4}, "out_channels=6 is not divisible by heads=4"),
    ({"in_channels": 4, "out_channels": 8, "kernel_att": 4}, "kernel_att must be odd, got 4"),
    ({"in_channels": 4, "out_channels": 8, "kernel_conv": 2}, "kernel_conv must be odd, got 2"),
    ({"in_channels": 0, "out_channels": 8}, "in_channels must be a positive int, got 0"),
    ({"in_channels": 4, "out_channels": 8, "stride": 0}, "stride must be a positive int, got 0"),
    ({"in_channels": 4, "out_channels": 8, "dilation": -1}, "dilation must be a positive int, got -1"),
    ({"in_channels": 4, "out_channels": 8, "heads": 0}, "heads must be a positive int, got 0"),
    ({"in_channels": 4, "out_channels": 8, "shift": "roll"}, "shift='roll' is not one of"),
    ({"in_channels": 4, "out_channels": 8, "combination": "sum"}, "combination='sum' is not one of"),
    ({"in_channels": 4, "out_channels": 8, "rates": (1.0,)}, "rates must be a pair"),
    ({"in_channels": 4, "out_channels": 8, "dtype": torch.int64}, "dtype must be a floating-point torch.dtype, got t"),
    ({"in_channels": 4, "out_channels": 8, "dtype": "float32"}, "dtype must be a floating-point torch.dtype, got 'f"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ACmix(**kwargs)


def test_bad_inputs():
    layer = ACmix(4, 8)
    with pytest.raises(ValueError, match=r"4-D .* got shape \(4, 9, 9\)"):
        layer(torch.randn(4, 9, 9))
    with pytest.raises(ValueError, match="x has 5 channels, the layer expects in_channels=4"):
        layer(torch.randn(1, 5, 9, 9))
    with pytest.raises(ValueError, match="must have a non-empty height and width"):
        layer(torch.randn(1, 4, 0, 9))
    with pytest.raises(ValueError, match="device='nonsense' is not a torch device"):
        ACmix(4, 8, device="nonsense")
    with pytest.raises(ValueError, match="backend='fastest' is not one of"):
        ACmix(4, 8, backend="fastest")(torch.randn(1, 4, 5, 5))


def test_reference_backend_forced():
    layer = ACmix(4, 8, backend=Backend.REFERENCE)
    assert layer(torch.randn(1, 4, 5, 5)).shape == (1, 8, 5, 5)


def test_shift_conv_with_fc_bias_matches_brute_force():
    from acmix.ops import shift_conv
    g = torch.Generator().manual_seed(0)
    b, p, d, h, w, kc, out_ch = 2, 6, 3, 5, 6, 3, 6
    pieces = torch.randn(b, p, d, h, w, generator=g, dtype=torch.float64)
    fc_w = torch.randn(kc * kc, p, 1, 1, generator=g, dtype=torch.float64)
    fc_b = torch.randn(kc * kc, generator=g, dtype=torch.float64)
    conv_w = torch.randn(out_ch, kc * kc, kc, kc, generator=g, dtype=torch.float64)
    out = shift_conv(pieces, fc_w, conv_w, kernel_conv=kc, out_channels=out_ch, fc_bias=fc_b)
    f = torch.einsum("tp,bpdhw->bdthw", fc_w[:, :, 0, 0], pieces) + fc_b.view(1, 1, -1, 1, 1)
    fp = F.pad(f, [1, 1, 1, 1])
    expect = torch.zeros(b, out_ch, h, w, dtype=torch.float64)
    for o in range(out_ch):
        for t in range(kc * kc):
            for u in range(kc):
                for v in range(kc):
                    expect[:, o] += conv_w[o, t, u, v] * fp[:, o // (out_ch // d), t, u:u + h, v:v + w]
    torch.testing.assert_close(out, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")
def test_cuda_device_without_cuda_is_one_line():
    with pytest.raises(ValueError, match="device='cuda:0': CUDA is not available"):
        ACmix(4, 8, device="cuda:0")


@pytest.mark.parametrize("backend", ["eager", "reference", None])
def test_meta_layer_gives_shapes(backend):
    """Shape inference on the meta device, as ``nn.Conv2d`` allows (the eager path skips its NaN test there)."""
    layer = ACmix(4, 8, kernel_att=3, heads=2, stride=2, device="meta", backend=backend)
    out = layer(torch.empty(3, 4, 9, 7, device="meta"))
    assert out.shape == (3, 8, 5, 4) and out.device.type == "meta"


def test_activation_checkpointing_while_auto_measures(tmp_path, monkeypatch):
    """``AUTO``'s first call measures the candidates inside the checkpointed forward; the recomputation
    finds the choice remembered. The trial runs' saved tensors must not count (same values, same grads)."""
    from torch.utils.checkpoint import checkpoint

    from acmix.ops import autotune, native

    if not native.available():
        pytest.skip("no C++ compiler: AUTO has nothing to measure")
    monkeypatch.setenv("ACMIX_AUTOTUNE", "1")
    monkeypatch.setenv("ACMIX_CACHE_DIR", str(tmp_path))
    autotune.clear()
    try:
        layer = make_layer((4, 8, 2, 3, 3, 1, 1, {}), dtype=torch.float64)
        x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
        out = checkpoint(layer, x, use_reentrant=False)
        gx, *gw = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])
        ref = acmix_reference(x, layer.weights(), layer.config)
        rx, *rw = torch.autograd.grad(ref.square().sum(), [x, *layer.parameters()])
        torch.testing.assert_close(out, ref)
        for a, b in zip([gx, *gw], [rx, *rw]):
            torch.testing.assert_close(a, b)
    finally:
        autotune.clear()
