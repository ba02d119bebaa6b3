"""The Triton window attention against the eager path and a per-pixel loop: values and the gradients of q, r, k, v.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set per test), so
these checks are in the default suite; the ``cuda`` tests repeat them on the GPU with bf16/fp16 and gradcheck.
"""

from __future__ import annotations

import importlib.util
import itertools
import json

import pytest
import torch

from acmix.analysis import kernel_resources as kr
from acmix.ops import Backend, acmix, acmix_reference, position_grid, reflect_index
from acmix.ops import triton_attention as ta
from acmix.ops.fast import attention_eager
from helpers import make_layer

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def interp(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(b, heads, hd, h, w, stride, pos, *, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, heads, hd, h, w, generator=g, dtype=torch.float64) for _ in range(3))
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    r = torch.randn(b, heads, 2, ho, wo, generator=g, dtype=torch.float64) if pos else None
    go = torch.randn(b, heads * hd, ho, wo, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) if t is not None else None for t in (q, r, k, v, go)]


def _grads(fn, q, r, k, v, go):
    """Output and the gradients of q, r, k, v (None for an absent r) of ``fn(q, r, k, v)``."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (q, r, k, v)]
    out = fn(*leaves)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(out, present, go))
    return out, [next(grads) if t is not None else None for t in leaves]


def _triton(args):
    return lambda q, r, k, v: ta.window_attention_triton(q, r, k, v, **args)


def _eager(args):
    s = args["stride"]
    return lambda q, r, k, v: attention_eager(q[..., ::s, ::s], r, k, v, **args)


def _brute(args):
    """The window attention one output pixel at a time, straight from the definition."""
    ka, s, dil, scale = args["kernel"], args["stride"], args["dilation"], args["scale"]

    def run(q, r, k, v):
        b, heads, hd, h, w = k.shape
        ho, wo = (h - 1) // s + 1, (w - 1) // s + 1
        pad = dil * (ka - 1) // 2
        ry, rx = reflect_index(h, pad), reflect_index(w, pad)
        loc = position_grid(h, w, dtype=k.dtype)[0]  # (2, H, W)
        rows = []
        for i in range(ho):
            for j in range(wo):
                ys = [int(ry[i * s + a * dil]) for a in range(ka) for _ in range(ka)]
                xs = [int(rx[j * s + c * dil]) for _ in range(ka) for c in range(ka)]
                logit = scale * torch.einsum("bhd,bhdn->bhn", q[..., i * s, j * s], k[..., ys, xs])
                if r is not None:
                    logit = logit - torch.einsum("bhc,cn->bhn", r[..., i, j], loc[:, ys, xs])
                rows.append(torch.einsum("bhn,bhdn->bhd", torch.softmax(logit, -1), v[..., ys, xs]))
        return torch.stack(rows, -1).reshape(b, heads * hd, ho, wo)

    return run


def _assert_same(a, b, tol):
    out, grads = a
    ref, ref_grads = b
    torch.testing.assert_close(out, ref.to(out.dtype), rtol=tol, atol=tol)
    for g, r in zip(grads, ref_grads):
        if r is None:
            assert g is None
        else:
            torch.testing.assert_close(g, r.to(g.dtype), rtol=tol, atol=tol)


# (batch, heads, head_dim, H, W, kernel, stride, dilation, position term)
CASES = [
    (1, 2, 4, 7, 5, 3, 1, 1, True),
    (3, 2, 4, 11, 9, 3, 2, 1, True),
    (1, 1, 16, 9, 7, 7, 2, 2, True),
    (1, 2, 5, 1, 1, 3, 1, 1, True),
    (2, 1, 4, 2, 3, 7, 1, 1, True),
    (1, 2, 4, 17, 10, 3, 1, 2, False),  # several query tiles and key tiles
    (1, 1, 20, 6, 5, 5, 3, 1, True),
]
IDS = ["b{}h{}d{}-{}x{}-k{}s{}d{}-{}".format(*c[:8], "pos" if c[8] else "nopos") for c in CASES]


def _args(hd, kernel, stride, dilation):
    return {"scale": hd**-0.5, "kernel": kernel, "stride": stride, "dilation": dilation}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_eager_float64(interp, case):
    b, heads, hd, h, w, ka, s, dil, pos = case
    q, r, k, v, go = _inputs(b, heads, hd, h, w, s, pos)
    args = _args(hd, ka, s, dil)
    _assert_same(_grads(_triton(args), q, r, k, v, go), _grads(_eager(args), q, r, k, v, go), 1e-10)


def test_matches_per_pixel_loop(interp):
    q, r, k, v, go = _inputs(2, 2, 3, 4, 3, 2, True, seed=3)
    args = _args(3, 5, 2, 1)
    _assert_same(_grads(_triton(args), q, r, k, v, go), _grads(_brute(args), q, r, k, v, go), 1e-10)


@pytest.mark.parametrize("layout", ["d-which-head", "channels_last"])
def test_reads_strided_views(interp, layout):
    """q, k, v as views of one (B, 3C, H, W) Stage-I map, as the layer passes them; dq zero off the stride."""
    b, heads, hd, h, w = 3, 2, 4, 7, 6
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(b, 3 * heads * hd, h, w, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        qkv = qkv.contiguous(memory_format=torch.channels_last)
        q, k, v = qkv.view(b, 3, heads, hd, h, w).unbind(1)
    else:
        q, k, v = qkv.view(b, hd, 3, heads, h, w).permute(2, 0, 3, 1, 4, 5).unbind(0)
    assert not q.is_contiguous()
    _, r, _, _, go = _inputs(b, heads, hd, h, w, 2, True, seed=6)
    args = _args(hd, 3, 2, 1)
    got = _grads(_triton(args), q, r, k, v, go)
    _assert_same(got, _grads(_eager(args), q, r, k, v, go), 1e-10)
    assert got[1][0][..., 1::2, :].abs().max() == 0 and got[1][0][..., 1::2].abs().max() == 0


def test_backward_keeps_inputs_not_output(interp):
    """Autograd keeps q, k, v as the input views (no copy), r and the LSE; never the output."""
    b, heads, hd, h, w = 2, 2, 4, 6, 5
    qkv = torch.randn(b, 3 * heads * hd, h, w, dtype=torch.float64, requires_grad=True)
    q, k, v = qkv.view(b, hd, 3, heads, h, w).permute(2, 0, 3, 1, 4, 5).unbind(0)
    r = torch.randn(b, heads, 2, h, w, dtype=torch.float64)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = ta.window_attention_triton(q, r, k, v, **_args(hd, 3, 1, 1))
    assert len(saved) == 5 and all(t.shape != out.shape for t in saved)
    assert sum(t.untyped_storage().data_ptr() == qkv.untyped_storage().data_ptr() for t in saved) == 3


def test_backward_allocates_no_padded_grid(interp):
    """The backward op's own allocations peak at 6.6x k's size (float32, 28x28, kernel 7): dq, dr, delta, the
    float32 dk/dv, the thin bands of reflected copies and one fold temporary.  Writing a padded copy of the
    grid and folding it with full-size gathers peaked at 10.5x."""
    from acmix.analysis.timing import PeakMemory

    q, r, k, v, go = _inputs(1, 2, 16, 28, 28, 1, True, dtype=torch.float32)
    _, lse = ta._forward(q, r, k, v, None, None, None, 0.25, 7, 1, 1)
    with PeakMemory() as tracker:  # the op's body: a dispatch mode does not see inside a custom op
        grads = ta._backward_op._init_fn(go, q, r, k, v, lse, None, None, 0.25, 7, 1, 1)
    assert tracker.peak <= 7 * k.numel() * k.element_size(), tracker.peak / (k.numel() * k.element_size())
    assert [g.shape for g in grads[:4]] == [q.shape, r.shape, k.shape, v.shape]


@pytest.mark.parametrize(("stride", "rates"), [(1, (0.7, -1.3)), (2, (0.0, 2.0))], ids=["s1", "s2-rate0"])
def test_rate_epilogue(interp, stride, rates):
    """``rate_att * attention + rate_conv * conv`` written by the kernel: values and the grads of all seven."""
    b, heads, hd, h, w = 2, 2, 4, 7, 6
    q, r, k, v, go = _inputs(b, heads, hd, h, w, stride, True, seed=12)
    g = torch.Generator().manual_seed(13)
    conv = torch.randn(b, *go.shape[2:], heads * hd, generator=g, dtype=torch.float64).permute(0, 3, 1, 2)
    ra, rc = (torch.tensor([x], dtype=torch.float64) for x in rates)
    args = _args(hd, 3, stride, 1)
    leaves = [t.requires_grad_() for t in (q, r, k, v, conv, ra, rc)]

    def run(fn):
        out = fn(*leaves)
        return out, torch.autograd.grad(out, leaves, go)

    got = run(lambda q, r, k, v, c, a, d: ta.window_attention_triton(q, r, k, v, **args, conv=c, rate_att=a,
                                                                     rate_conv=d))
    want = run(lambda q, r, k, v, c, a, d: a * _eager(args)(q, r, k, v) + d * c)
    _assert_same(got, want, 1e-10)


def test_rate_gradients_need_no_float32_products(interp):
    """With the rates in the epilogue, a bf16 backward peaks at 4.5x the output gradient's bytes (28x28, the
    tensors autograd sees): the dQ kernel reduces ``go . conv`` per query.  Forming ``go * conv`` in float32
    for the convolution rate's gradient took 10.4x."""
    from acmix.analysis.timing import PeakMemory

    q, r, k, v, go = _inputs(1, 2, 16, 28, 28, 1, True, dtype=torch.bfloat16)
    conv = torch.randn(go.shape, dtype=torch.bfloat16)
    leaves = [t.requires_grad_() for t in (q, r, k, v, conv, torch.tensor([0.7]), torch.tensor([-1.3]))]
    out = ta.window_attention_triton(*leaves[:4], **_args(16, 7, 1, 1), conv=leaves[4], rate_att=leaves[5],
                                     rate_conv=leaves[6])
    with PeakMemory() as tracker:
        grads = torch.autograd.grad(out, leaves, go)
    assert tracker.peak <= 5 * go.nbytes, tracker.peak / go.nbytes
    want = (go.double() * conv.double()).sum()
    assert abs(grads[6].item() - want.item()) <= 1e-5 * abs(want.item())


def test_float32_within_1e5(interp):
    b, heads, hd, h, w, ka, s, dil = 2, 2, 8, 9, 8, 5, 2, 1
    q, r, k, v, go = _inputs(b, heads, hd, h, w, s, True, seed=7)
    args = _args(hd, ka, s, dil)
    out, grads = _grads(_triton(args), *(t.float() for t in (q, r, k, v, go)))
    ref, ref_grads = _grads(_eager(args), q, r, k, v, go)
    assert out.dtype == torch.float32
    for a, e in zip([out, *grads], [ref, *ref_grads]):
        assert ((a.double() - e).abs().max() / e.abs().max()).item() <= 1e-5


def _touched(h, w, ka, s, dil, y, x):
    """(Ho, Wo) bool: the outputs whose window holds source pixel (y, x)."""
    pad = dil * (ka - 1) // 2
    ry, rx = reflect_index(h, pad), reflect_index(w, pad)
    rows = torch.tensor([any(int(ry[i * s + a * dil]) == y for a in range(ka)) for i in range((h - 1) // s + 1)])
    cols = torch.tensor([any(int(rx[j * s + c * dil]) == x for c in range(ka)) for j in range((w - 1) // s + 1)])
    return rows[:, None] & cols[None, :]


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy, inside the interpreter
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_nan_stays_local(interp, which):
    """A NaN pixel changes only the outputs whose windows hold it, and the gradients as the per-pixel loop does."""
    b, heads, hd, h, w, ka, s, dil = 1, 1, 4, 9, 8, 3, 1, 2
    q, r, k, v, go = _inputs(b, heads, hd, h, w, s, True, seed=8)
    y, x = 2, 5
    {"q": q, "k": k, "v": v}[which][0, 0, 1, y, x] = float("nan")
    args = _args(hd, ka, s, dil)
    out, grads = _grads(_triton(args), q, r, k, v, go)
    ref, ref_grads = _grads(_brute(args), q, r, k, v, go)
    want = torch.zeros(h, w, dtype=torch.bool)
    want[y, x] = True
    if which != "q":
        want = _touched(h, w, ka, s, dil, y, x)
    bad = out.isnan().any(1)[0]
    assert torch.equal(bad, want)
    for a, e in zip([out, *grads], [ref, *ref_grads]):
        assert torch.equal(a.isnan(), e.isnan())
        torch.testing.assert_close(a.nan_to_num(), e.nan_to_num(), rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_inf_value_reaches_its_windows_only(interp):
    b, heads, hd, h, w, ka, s, dil = 1, 2, 4, 8, 9, 3, 2, 1
    q, r, k, v, _ = _inputs(b, heads, hd, h, w, s, True, seed=9)
    v[0, 1, 2, 3, 4] = float("inf")
    args = _args(hd, ka, s, dil)
    out = _triton(args)(q, r, k, v)
    ref = _brute(args)(q, r, k, v)
    assert torch.equal(out.isinf(), ref.isinf()) and out.isinf().any()
    assert torch.equal(out.isinf()[0, 6], _touched(h, w, ka, s, dil, 3, 4))
    torch.testing.assert_close(out.nan_to_num(posinf=0.0), ref.nan_to_num(posinf=0.0), rtol=1e-10, atol=1e-10)


def test_custom_op_checks(interp):
    q, r, k, v, _ = _inputs(1, 1, 4, 5, 4, 1, True, seed=10)
    conv, ra, rc = torch.randn(1, 4, 5, 4, dtype=q.dtype), torch.ones(1, dtype=q.dtype), torch.ones(1, dtype=q.dtype)
    for extra in ((None, None, None), (conv, ra, rc)):
        torch.library.opcheck(torch.ops.acmix.window_attention_triton.default, (q, r, k, v, *extra, 0.5, 3, 1, 1),
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.slow  # dynamo's tracing takes ~10 s here
def test_traces_as_one_op(interp):
    """torch.compile (aot_eager: no C++ build) sees the custom op, forward and backward, with the same results."""
    q, r, k, v, go = _inputs(1, 2, 4, 5, 6, 2, True, seed=11)
    args = _args(4, 3, 2, 1)
    compiled = torch.compile(_triton(args), backend="aot_eager", fullgraph=True)
    _assert_same(_grads(compiled, q, r, k, v, go), _grads(_triton(args), q, r, k, v, go), 0.0)


def test_available_and_errors(interp, monkeypatch):
    x = torch.zeros(1, 1, 1, 2, 2)
    assert ta.available(x) and not ta.available(x.long())
    q, r, k, v, _ = _inputs(1, 1, 4, 5, 4, 1, True)
    with pytest.raises(ValueError, match="kernel must be odd"):
        ta.window_attention_triton(q, r, k, v, scale=0.5, kernel=4, stride=1, dilation=1)
    with pytest.raises(ValueError, match="r has shape"):
        ta.window_attention_triton(q, r, k, v, scale=0.5, kernel=3, stride=2, dilation=1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not ta.available(x)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        ta.window_attention_triton(q, r, k, v, scale=0.5, kernel=3, stride=1, dilation=1)


SWEEP = list(itertools.product([(1, 1), (2, 3), (4, 4), (7, 9), (13, 11)], [3, 5, 7], [1, 2, 3], [1, 2]))


@pytest.mark.slow
@pytest.mark.parametrize(("size", "ka", "s", "dil"), SWEEP)
def test_sweep_float64(interp, size, ka, s, dil):
    q, r, k, v, go = _inputs(2, 2, 4, *size, s, True, seed=ka * 100 + s * 10 + dil)
    args = _args(4, ka, s, dil)
    _assert_same(_grads(_triton(args), q, r, k, v, go), _grads(_eager(args), q, r, k, v, go), 1e-10)


# ---------------------------------------------------------------- on the GPU


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_eager(case, dtype):
    b, heads, hd, h, w, ka, s, dil, pos = case
    q, r, k, v, go = _inputs(b, heads, hd, h, w, s, pos, device=CUDA)
    args = _args(hd, ka, s, dil)
    ref = _grads(_eager(args), q, r, k, v, go)
    got = _grads(_triton(args), *(t.to(dtype) if t is not None else None for t in (q, r, k, v, go)))
    if dtype == torch.float64:
        _assert_same(got, ref, 1e-10)
        return
    for a, e in zip([got[0], *got[1]], [ref[0], *ref[1]]):
        if e is not None:
            assert ((a.double() - e).abs().max() / e.abs().max()).item() <= 1e-5


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize(("dtype", "tol"), [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_cuda_half_precision(dtype, tol):
    """Relative max error of bf16/fp16 against float64 (inputs rounded the same way) stays within ``tol``."""
    b, heads, hd, h, w, ka, s, dil = 4, 4, 32, 28, 28, 7, 1, 1
    q, r, k, v, go = (t.to(dtype).double() for t in _inputs(b, heads, hd, h, w, s, True, device=CUDA))
    args = _args(hd, ka, s, dil)
    ref = _grads(_eager(args), q, r, k, v, go)
    got = _grads(_triton(args), *(t.to(dtype) for t in (q, r, k, v, go)))
    for a, e in zip([got[0], *got[1]], [ref[0], *ref[1]]):
        assert a.dtype == dtype
        assert ((a.double() - e).abs().max() / e.abs().max()).item() <= tol


@needs_cuda
@pytest.mark.cuda
def test_cuda_gradcheck_and_deterministic():
    q, r, k, v, go = _inputs(2, 2, 4, 6, 5, 2, True, device=CUDA)
    args = _args(4, 3, 2, 1)
    leaves = [t.requires_grad_() for t in (q, r, k, v)]
    assert torch.autograd.gradcheck(_triton(args), leaves)
    first = _grads(_triton(args), q, r, k, v, go)[1]
    again = _grads(_triton(args), q, r, k, v, go)[1]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_grid_flattens_past_65535_programs_per_tile(monkeypatch):
    """CUDA caps a grid's second dimension at 65,535: batch x heads past it runs on a one-dimensional grid."""
    assert ta._grid(70_000, 9, 11, True)({"TH": 4, "TW": 2}) == (3 * 6 * 70_000,)
    assert ta._grid(65_535, 9, 11, False)({"TH": 4, "TW": 2}) == (3 * 6, 65_535)
    k = torch.empty(16_383, 4, 8, 3, 3, device="meta")
    assert not ta._launch_args(k, None, k, k, 3, 1, 1, True)[2]["FLAT"]  # 65,532 (batch, head) pairs
    k = torch.empty(16_384, 4, 8, 3, 3, device="meta")
    assert ta._launch_args(k, None, k, k, 3, 1, 1, True)[2]["FLAT"]  # 65,536


def test_flat_grid_matches_eager(interp, monkeypatch):
    """The one-dimensional grid's program numbering, forced at a small batch: several tiles, batches and heads."""
    monkeypatch.setattr(ta, "MAX_GRID_Y", 1)
    b, heads, hd, h, w, ka, s, dil, pos = 2, 2, 4, 9, 10, 3, 2, 1, True
    q, r, k, v, go = _inputs(b, heads, hd, h, w, s, pos)
    args = _args(hd, ka, s, dil)
    assert ta._launch_args(k, r, k, v, ka, s, dil, True)[2]["FLAT"]
    _assert_same(_grads(_triton(args), q, r, k, v, go), _grads(_eager(args), q, r, k, v, go), 1e-10)


@needs_cuda
@pytest.mark.cuda
def test_cuda_batch_times_heads_over_65535():
    """16,385 x 4 (batch x heads) programs per tile: the flat grid launches and matches the eager path."""
    q, r, k, v, go = _inputs(16_385, 4, 4, 2, 3, 1, True, device=CUDA)
    args = _args(4, 3, 1, 1)
    _assert_same(_grads(_triton(args), q, r, k, v, go), _grads(_eager(args), q, r, k, v, go), 1e-10)


def test_autotune_prunes_tiles_over_registers_shared_memory_or_the_map(monkeypatch):
    """The GPU configs kept on a first call: no tile with more logits than the registers hold (8x8 at kernel 7),
    none whose k/v operand overflows shared memory (then the smallest tile), none larger than a small map
    needs; one config (nothing benchmarked) with ``ACMIX_AUTOTUNE=0``."""
    monkeypatch.setenv("ACMIX_AUTOTUNE", "1")
    mod = ta._kernels(False)
    configs = [mod.triton.Config({"TH": th, "TW": tw}, num_warps=nw) for th, tw, nw in ta.TILES]
    prune = mod._prune(mod._query_heuristics, mod._query_extent)

    def kept(hd, dtype, ho, wo, ka=7, s=2, dil=1):
        q = torch.empty(0, dtype=dtype)
        cfgs = prune(configs, {"q_ptr": q, "H": ho * s, "W": wo * s, "HO": ho, "WO": wo},
                     KA=ka, S=s, DIL=dil, BLOCK_D=max(32, hd))
        return [(c.kwargs["TH"], c.kwargs["TW"], c.num_warps) for c in cfgs]

    small = [(4, 4, 8), (2, 8, 8), (4, 4, 4), (4, 2, 8)]
    assert kept(64, torch.bfloat16, 28, 28) == small  # 8x8: 64 x 512 logits at stride 2
    assert kept(32, torch.bfloat16, 28, 28, s=1) == small  # and 64 x 256 at stride 1
    assert kept(128, torch.bfloat16, 14, 14) == [(4, 2, 8)]  # 13 x 13 halo rows x 128 dims: 64 KiB k/v tiles
    assert kept(128, torch.float64, 28, 28) == [(4, 2, 8)]  # every k/v tile over 32 KiB: the smallest
    assert kept(32, torch.bfloat16, 56, 56, ka=3, s=1) == ta.TILES  # 8x8 of kernel 3: 64 x 128
    # 8x8 covers 3x3 in one program, as 4x4 does; 2x8 in two, as the smaller 4x2
    assert kept(32, torch.bfloat16, 3, 3, ka=3, s=1) == [(4, 4, 8), (4, 4, 4), (4, 2, 8)]
    key = mod._prune(mod._key_heuristics, mod._key_extent)
    assert len(key(configs, {"q_ptr": torch.empty(0), "H": 56, "W": 56, "HO": 56, "WO": 56},
                   KA=3, S=1, DIL=1, BLOCK_D=32)) == len(configs)
    monkeypatch.setenv("ACMIX_AUTOTUNE", "0")
    assert kept(64, torch.bfloat16, 28, 28) == [(4, 4, 8)]
    assert kept(128, torch.bfloat16, 14, 14) == [(4, 2, 8)]


def _assert_sm90_tiles(name, dtype, ka, s, hd, size, every_kept):
    if not ta.fits(dtype, hd, ka, s, 1):
        pytest.skip("outside ta.fits: never launched (test_fits_matches_sm90_builds)")
    for cfg, constants in kr.launch_tiles(name, dtype, ka, s, hd, size, every_tile=every_kept):
        used = kr.build_tile(name, dtype, cfg, constants)
        assert used["shared"] <= kr.SM90_SHARED, (cfg, used)
        if dtype in (torch.bfloat16, torch.float16) and not every_kept:  # the training dtypes' default tile
            assert used["spilled"] == 0, (cfg, used)


def test_default_tiles_build_for_sm90_without_spills(tmp_path, monkeypatch, capsys):
    """Without a GPU, the tile used when nothing is measured goes through Triton's whole pipeline to an sm_90
    binary (``benchmarks/kernel_resources.py`` at stage 1 of acmix_resnet50, bf16): within shared memory and
    without register spills (8x8 tiles at 4 warps spilled 0.5-4.6 KiB per thread)."""
    pytest.importorskip("triton.backends.nvidia")
    monkeypatch.setenv("ACMIX_AUTOTUNE", "1")  # the table shows the default tile whatever the environment
    monkeypatch.setattr(kr, "RESNET50_GEOMETRIES", kr.RESNET50_GEOMETRIES[:1])
    kr.main(["--dtype", "bfloat16", "--json", str(tmp_path / "r.json")])
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(r["op"], r["tile"]) for r in rows] == [("fwd", "4x4/8w"), ("bwd_query", "4x4/8w"), ("bwd_key", "4x4/8w")]
    assert all(r["spilled"] == 0 and r["shared"] <= kr.SM90_SHARED for r in rows), rows
    assert "| bfloat16 | 7 | 1 | 16 | 56x56 | bwd_key | 4x4/8w |" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--target", "gpu"], "--target must be sm_NN or 'device', got 'gpu'"),
    (["--tile", "8x8"], "--tile takes THxTWxWARPS, got '8x8'"),
    (["--min-block-d", "24"], "--min-block-d must be a power of two >= 16, got 24"),
])
def test_kernel_resources_refuses_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit):
        kr.main(argv)
    assert message in capsys.readouterr().err


def test_kernel_resources_builds_the_tiles_asked_for():
    """``--tile`` gives exactly those tiles, unpruned (8x8 at kernel 7 is pruned otherwise); ``--min-block-d``
    pads small head dims less and leaves larger ones alone."""
    (cfg, constants), = kr.launch_tiles("attention_fwd", torch.bfloat16, 7, 1, 16, 56, tiles=[(8, 8, 4)],
                                        min_block_d=16)
    assert (cfg.kwargs, cfg.num_warps, constants["BLOCK_D"], constants["BLOCK_K"]) == ({"TH": 8, "TW": 8}, 4, 16, 256)
    (_, constants), = kr.launch_tiles("attention_fwd", torch.bfloat16, 7, 1, 64, 14, min_block_d=16)
    assert constants["BLOCK_D"] == 64
    assert kr.launch_tiles("attention_fwd", torch.bfloat16, 7, 1, 16, 56)[0][1]["BLOCK_D"] == 32


@pytest.mark.slow
@pytest.mark.parametrize("name", kr.KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("geometry", kr.RESNET50_GEOMETRIES, ids=str)
@pytest.mark.parametrize("every_kept", [False, True], ids=["default", "autotuned"])
def test_tiles_build_for_sm90(name, dtype, geometry, every_kept):
    """Every tile the autotuner may try builds for sm_90 within shared memory; the default one also spills
    nothing in bf16/fp16 (float32's three-product dots do spill at large head dims)."""
    pytest.importorskip("triton.backends.nvidia")
    _assert_sm90_tiles(name, dtype, *geometry, every_kept=every_kept)


def test_fits_only_refuses_what_overflows_shared_memory():
    """float64 at head dim 128 is the one acmix_resnet50 geometry whose smallest tile is over the limit."""
    assert ta.fits(torch.float64, 64, 7, 2, 1) and not ta.fits(torch.float64, 128, 7, 1, 1)
    assert all(ta.fits(dtype, hd, ka, s, 1) for ka, s, hd, _ in kr.RESNET50_GEOMETRIES
               for dtype in (torch.bfloat16, torch.float16, torch.float32))
    assert not ta.fits(torch.float32, 256, 7, 1, 1) and ta.fits(torch.bfloat16, 256, 7, 1, 1)


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "hd", "ka", "s"), [(torch.float64, 64, 7, 2), (torch.float64, 128, 7, 1),
                                                       (torch.bfloat16, 256, 7, 1), (torch.float32, 256, 7, 1),
                                                       (torch.float32, 128, 7, 2)], ids=str)
def test_fits_matches_sm90_builds(dtype, hd, ka, s):
    """``ta.fits`` says yes exactly when the smallest tile of all three kernels builds within shared memory."""
    pytest.importorskip("triton.backends.nvidia")
    shared = []
    for name in kr.KERNELS:
        (cfg, constants), = kr.launch_tiles(name, dtype, ka, s, hd, 28,
                                           tiles=[min(ta.TILES, key=lambda tile: tile[0] * tile[1])])
        shared.append(kr.build_tile(name, dtype, cfg, constants)["shared"])
    assert ta.fits(dtype, hd, ka, s, 1) == (max(shared) <= kr.SM90_SHARED), shared


def test_layer_under_autocast_mixes_dtypes(interp):
    """The layer's Triton path under fp16 autocast (fp16 q/k/v/conv, float32 rates): fp16 output like the
    eager path's (docs/operator.md, "Autocast"), values and the rates' float32 gradients as eager's.
    (bf16 cannot be checked here: the interpreter's bf16 ``tl.dot`` is wrong; the CUDA tests cover it.)"""
    entry = (8, 16, 4, 7, 3, 2, 1, {})
    layer = make_layer(entry, seed=3, dtype=torch.float32)
    x = torch.randn(2, 8, 15, 13, generator=torch.Generator().manual_seed(4), requires_grad=True)
    ref = acmix_reference(x.double(), make_layer(entry, seed=3).weights(), layer.config)
    results = {}
    for backend in (Backend.EAGER, Backend.TRITON):
        with torch.autocast("cpu", dtype=torch.float16):
            out = acmix(x, layer.weights(), layer.config, backend=backend)
        rates = [p for n, p in layer.named_parameters() if "rate" in n]
        results[backend] = out, torch.autograd.grad(out.float().sum(), [x, *rates])
    out, grads = results[Backend.TRITON]
    assert out.dtype == results[Backend.EAGER][0].dtype == torch.float16
    assert all(g.dtype == torch.float32 for g in grads)
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 3e-3
    for g, e in zip(grads, results[Backend.EAGER][1]):
        assert ((g - e).abs().max() / e.abs().max()).item() < 1e-2
