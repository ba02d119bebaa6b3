"""SAN patchwise aggregation on the Triton kernels against the pixel-by-pixel reference.

Without a GPU the kernels run under Triton's interpreter (CPU tensors), in
float64; the ``cuda`` tests run the compiled kernels, plus low precision and
gradcheck.  The interpreter is slow: shapes here are tiny on purpose.
"""

from __future__ import annotations

import pytest
import torch

from acmix.analysis.kernel_resources import SM90_SHARED, build, resources
from acmix.ops.patchwise import patchwise_aggregation, patchwise_aggregation_reference

triton_patchwise = pytest.importorskip("acmix.ops.triton_patchwise")
pytestmark = pytest.mark.skipif(triton_patchwise.triton is None, reason="needs Triton")
patchwise_aggregation_triton = triton_patchwise.patchwise_aggregation_triton
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# (B, C, Cw, H, W, kernel, stride, dilation)
CASES = [
    (1, 8, 1, 5, 6, 3, 1, 1),  # share_planes 8
    (3, 4, 2, 5, 4, 3, 2, 1),  # batch 3, odd sizes, stride 2
    (1, 4, 4, 6, 7, 3, 1, 2),  # dilation 2, share_planes 1
    (1, 2, 1, 1, 1, 7, 1, 1),  # one pixel: the window repeats it
    (1, 2, 2, 2, 3, 7, 2, 1),  # map smaller than the padding: iterated reflection, stride 2
]
IDS = [f"b{b}c{c}w{cw}_{h}x{w}_k{k}s{s}d{d}" for b, c, cw, h, w, k, s, d in CASES]
# float32 at 1e-5; bf16/fp16 outputs and gradients sum k*k products rounded once, so the bound grows with k
TOLERANCES = [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 4e-3)]
SLOW_CASES = [
    (1, 2, 1, 4, 5, 7, 1, 1),
    (2, 16, 2, 9, 11, 7, 1, 1),
    (2, 8, 8, 12, 9, 5, 2, 2),
    (1, 12, 4, 3, 8, 7, 2, 3),
    (3, 16, 2, 14, 14, 3, 1, 1),
    (2, 4, 1, 7, 7, 7, 1, 2),
]


def _inputs(case, dtype=torch.float64, device="cpu", seed=0):
    b, c, cw, h, w, k, s, d = case
    g = torch.Generator().manual_seed(seed)
    ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
    v = torch.randn(b, c, h, w, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    wt = torch.randn(b, cw, k * k, ho, wo, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return v.requires_grad_(), wt.requires_grad_(), dict(kernel_size=k, stride=s, dilation=d)


def _check_against_reference(case, device="cpu", dtype=torch.float64, tol=1e-12):
    if dtype in (torch.bfloat16, torch.float16):
        tol *= case[5]
    v, wt, kw = _inputs(case, dtype, device)
    out = patchwise_aggregation_triton(v, wt, **kw)
    v64, wt64 = (t.detach().cpu().double().requires_grad_() for t in (v, wt))
    ref = patchwise_aggregation_reference(v64, wt64, **kw)
    assert out.dtype == dtype and out.shape == ref.shape
    torch.testing.assert_close(out.cpu().double(), ref, rtol=tol, atol=tol)
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dtype)
    grads = torch.autograd.grad(out, (v, wt), g)
    g = g.cpu().double()  # the reference gets the same (rounded) incoming gradient
    grads_ref = torch.autograd.grad(ref, (v64, wt64), g)
    for a, b in zip(grads, grads_ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.cpu().double(), b, rtol=tol, atol=tol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_interpreter_matches_reference(case):
    _check_against_reference(case)


@pytest.mark.parametrize(("dtype", "tol"), TOLERANCES, ids=str)
def test_interpreter_low_precision(dtype, tol):
    _check_against_reference((1, 4, 2, 5, 4, 3, 2, 1), "cpu", dtype, tol)


def test_mixed_dtypes_promote():
    """bf16 values with float32 weights (autocast's mix): float32 output, each gradient in its input's dtype."""
    v, wt, kw = _inputs((1, 4, 2, 4, 5, 3, 1, 1))
    v16 = v.detach().bfloat16().requires_grad_()
    wt32 = wt.detach().float().requires_grad_()
    out = patchwise_aggregation_triton(v16, wt32, **kw)
    assert out.dtype == torch.float32
    ref = patchwise_aggregation_reference(v16.double(), wt32.double(), **kw)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    d_v, d_wt = torch.autograd.grad(out.sum(), (v16, wt32))
    assert d_v.dtype == torch.bfloat16 and d_wt.dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES)
def test_interpreter_matches_reference_sweep(case):
    _check_against_reference(case)


def test_non_contiguous_inputs_and_gradient():
    """Values, weights and the incoming gradient are read through their strides."""
    v, wt, kw = _inputs((1, 4, 2, 5, 4, 3, 2, 1))
    v_cl = v.detach().to(memory_format=torch.channels_last).requires_grad_()
    wt_t = wt.detach().transpose(3, 4).contiguous().transpose(3, 4).requires_grad_()  # same values, other strides
    out = patchwise_aggregation_triton(v_cl, wt_t, **kw)
    ref = patchwise_aggregation_reference(v, wt, **kw)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn(ref.shape[:2] + ref.shape[2:][::-1], dtype=torch.float64).transpose(2, 3)  # strided grad
    grads = torch.autograd.grad(out, (v_cl, wt_t), g, retain_graph=True)
    for a, b in zip(grads, torch.autograd.grad(ref, (v, wt), g, retain_graph=True)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    expanded = torch.ones(1, 1, 1, 1, dtype=torch.float64).expand(ref.shape)  # stride-0 gradient (from .sum())
    for a, b in zip(torch.autograd.grad(out, (v_cl, wt_t), expanded), torch.autograd.grad(ref, (v, wt), expanded)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_nan_stays_local():
    """A NaN value pixel changes only the outputs whose (reflected) windows read it."""
    case = (1, 2, 1, 6, 7, 3, 1, 1)
    v, wt, kw = _inputs(case)
    v = v.detach().clone()
    v[0, 1, 0, 3] = float("nan")
    out = patchwise_aggregation_triton(v, wt.detach(), **kw)
    reads = patchwise_aggregation_reference(torch.isnan(v).double(), torch.ones_like(wt), **kw) > 0
    assert reads.any() and not reads.all()
    assert torch.equal(torch.isnan(out), reads)
    clean = v.nan_to_num(0.0)
    torch.testing.assert_close(out[~reads], patchwise_aggregation_reference(clean, wt.detach(), **kw)[~reads])


def test_dispatch(monkeypatch):
    v, wt, kw = _inputs(CASES[0])
    v, wt = v.detach(), wt.detach()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton_patchwise.available(v)
    with pytest.raises(ValueError, match="backend='triton' needs Triton"):
        patchwise_aggregation(v, wt, **kw, backend="triton")
    with pytest.raises(ValueError, match="backend must be"):
        patchwise_aggregation(v, wt, **kw, backend="cpu_kernel")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_patchwise.available(v) and not triton_patchwise.available(v.int())
    calls = []
    monkeypatch.setattr(triton_patchwise, "patchwise_aggregation_triton",
                        lambda *a, **k: calls.append(1) or patchwise_aggregation_triton(*a, **k))
    eager = patchwise_aggregation(v, wt, **kw)  # AUTO keeps CPU tensors on the torch path
    assert not calls
    torch.testing.assert_close(patchwise_aggregation(v, wt, **kw, backend="triton"), eager, rtol=1e-12, atol=1e-12)
    assert calls == [1]


def test_grids_fold_the_batch_into_the_first_dimension(monkeypatch):
    """CUDA caps a grid's second and third dimensions at 65,535: a batch of 70,000 goes into the first."""
    grids = []

    class Launch:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton_patchwise, "_kernels", lambda interpret: (Launch(), Launch()))
    v = torch.zeros(70_000, 2, 1, 3, requires_grad=True)
    wt = torch.zeros(70_000, 1, 9, 1, 3, requires_grad=True)
    patchwise_aggregation_triton(v, wt, kernel_size=3).sum().backward()
    assert grids == [(70_000, 1), (70_000, 1), (70_000, 1)]  # forward, weight gradient, value gradient


def test_empty_batch_with_backend_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    v, wt, kw = _inputs((0, 4, 2, 5, 4, 3, 2, 1))
    out = patchwise_aggregation(v, wt, **kw, backend="triton")
    assert out.shape == (0, 4, 3, 2)
    out.sum().backward()
    assert v.grad.shape == v.shape and wt.grad.shape == wt.shape


def test_fake_tensor_shapes_and_dtype():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        v = torch.empty(2, 8, 9, 7, dtype=torch.bfloat16)
        wt = torch.empty(2, 2, 9, 5, 4, dtype=torch.float32)
        out = triton_patchwise._forward(v, wt, 3, 2, 1)
        d_v, d_wt = triton_patchwise._backward(out, v, wt, 3, 2, 1)
    assert out.shape == (2, 8, 5, 4) and out.dtype == torch.float32
    assert d_v.shape == v.shape and d_v.dtype == v.dtype and d_wt.shape == wt.shape and d_wt.dtype == wt.dtype


@pytest.mark.parametrize("device", [pytest.param("cpu", marks=pytest.mark.slow),
                                    pytest.param("cuda", marks=[CUDA, pytest.mark.cuda])])
def test_custom_op_registration(device):
    """Schema, fake tensor, autograd registration and AOT dispatch of the custom op (``torch.library.opcheck``)."""
    v, wt, _ = _inputs((1, 4, 2, 3, 4, 3, 1, 1), device=device)
    result = torch.library.opcheck(triton_patchwise._forward, (v, wt, 3, 1, 1))
    assert set(result.values()) == {"SUCCESS"}


def test_kernels_compile_for_an_nvidia_target():
    """Without a GPU, the compiled (not interpreted) kernels still go through Triton's whole pipeline to an
    sm_90 binary, within shared memory and without spilling registers."""
    pytest.importorskip("triton.backends.nvidia")
    tl = triton_patchwise.tl
    window, value_grad = triton_patchwise._kernels(interpret=False)
    launches = [(window, dict(v_ptr="*bf16", a_ptr="*fp32", out_ptr="*fp32"), dict(GRAD_WEIGHT=False)),
                (window, dict(v_ptr="*fp16", a_ptr="*fp16", out_ptr="*fp32"), dict(GRAD_WEIGHT=True)),
                (value_grad, dict(g_ptr="*fp32", w_ptr="*fp32", out_ptr="*bf16", tab_h_ptr="*i32", n_h_ptr="*i32",
                                  tab_w_ptr="*i32", n_w_ptr="*i32"), {})]
    for kernel, pointers, flags in launches:
        compiled = build(kernel, pointers, dict(K=7, ACC=tl.float32, BLOCK_C=16, BLOCK_P=64, **flags))
        assert ".entry" in compiled.asm["ptx"]
        used = resources(compiled)
        assert used["spilled"] == 0 and used["shared"] <= SM90_SHARED, used


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES + SLOW_CASES)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-12), *TOLERANCES], ids=str)
def test_cuda_matches_reference(case, dtype, tol):
    _check_against_reference(case, "cuda", dtype, tol)


@CUDA
@pytest.mark.cuda
def test_cuda_dispatch_gradcheck_and_determinism():
    case = CASES[1]
    v, wt, kw = _inputs(case, device="cuda")
    assert torch.autograd.gradcheck(lambda a, b: patchwise_aggregation(a, b, **kw), (v, wt), fast_mode=True)
    out = patchwise_aggregation(v, wt, **kw)  # AUTO: the Triton path on CUDA
    g = torch.randn_like(out)
    first = torch.autograd.grad(out, (v, wt), g)
    second = torch.autograd.grad(patchwise_aggregation(v, wt, **kw), (v, wt), g)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    torch.testing.assert_close(out, patchwise_aggregation(v, wt, **kw, backend="eager"), rtol=1e-12, atol=1e-12)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = patchwise_aggregation(v.float().bfloat16(), wt.float(), **kw)
    assert mixed.dtype == torch.float32
