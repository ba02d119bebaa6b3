"""The compiled CPU kernel: its build (name, ISA, flags, CLI), the custom ops, NaN/Inf and second derivatives."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, jacrev, jvp, vmap

from acmix.cli.main import main
from acmix.ops import Backend, acmix, acmix_reference, native, use_backend
from helpers import make_layer

# (heads, kernel_att, kernel_conv, stride, dilation, size, attention, conv, position term, conv bias)
OPS = [
    (2, 3, 3, 1, 1, (4, 5), True, True, True, True),
    (1, 3, 1, 2, 2, (5, 3), True, True, True, False),
    (2, 5, 3, 2, 1, (3, 4), True, False, False, False),
    (2, 3, 3, 2, 1, (4, 4), False, True, False, True),
]


def _op_inputs(heads, ka, kc, stride, dil, size, att, conv, pe, bias, *, batch=2, seed=0):
    """Random float64 inputs of ``acmix::stage2`` (all requiring grad) and its non-tensor arguments."""
    g = torch.Generator().manual_seed(seed)
    hd = 2
    c = heads * hd
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()  # noqa: E731
    tensors = (r(batch, 3 * c, *size), r(hd, 2) if pe else None, r(c, 3 * heads, kc, kc) if conv else None,
               r(c) if bias and conv else None, r(1), r(1))
    return tensors, (heads, att, ka, kc, stride, dil)


def _present(tensors):
    return [t for t in tensors if t is not None]


def _op_fn(tensors, args):
    """``acmix::stage2`` as a function of the present tensors only (what gradcheck wants)."""
    def fn(*present):
        it = iter(present)
        return native._stage2(*(next(it) if t is not None else None for t in tensors), *args)
    return fn


# ---------------------------------------------------------------- build


def test_build_name_keys_isa_and_flags(monkeypatch):
    monkeypatch.delenv("ACMIX_NATIVE_MARCH", raising=False)
    default = native.build_config()
    assert "-march=native" not in default.flags and "-ffast-math" not in default.flags
    assert default.name.startswith("acmix_stage2_") and default.name.isidentifier()
    assert native.build_config() == default  # deterministic: the same process or checkout finds its build
    monkeypatch.setenv("ACMIX_NATIVE_MARCH", "x86-64-v2")
    v2 = native.build_config()
    assert v2.isa == "x86-64-v2" and "-march=x86-64-v2" in v2.flags and v2.name != default.name
    monkeypatch.setenv("ACMIX_NATIVE_MARCH", "")
    generic = native.build_config()
    assert generic.isa == "default" and not any(f.startswith("-march") for f in generic.flags)
    assert len({default.name, v2.name, generic.name}) == 3


@pytest.mark.parametrize("change", ["source", "torch", "compiler"])
def test_build_name_keys_source_torch_compiler(monkeypatch, tmp_path, change):
    before = native.build_config()
    if change == "source":
        source = tmp_path / "stage2.cpp"
        source.write_text(native._SOURCE.read_text() + "\n// edited\n")
        monkeypatch.setattr(native, "_SOURCE", source)
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", torch.__version__ + ".other")
    else:
        monkeypatch.setattr(native, "_compiler_version", lambda path: "another compiler 1.0")
    after = native.build_config()
    assert after.name != before.name and after.isa == before.isa


@pytest.mark.parametrize(("capability", "level"), [("AVX512", "x86-64-v4"), ("AVX2", "x86-64-v3"),
                                                   ("DEFAULT", "x86-64")])
def test_build_isa_follows_torch_capability(monkeypatch, capability, level):
    monkeypatch.delenv("ACMIX_NATIVE_MARCH", raising=False)
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert native.build_config().isa == level
    monkeypatch.setattr(native.platform, "machine", lambda: "aarch64")
    assert native.build_config().isa == "default"


def test_build_kernel_cli(native_kernel, capsys):
    assert main(["build-kernel"]) == 0
    path, info = capsys.readouterr().out.splitlines()
    config, so = native_kernel.build()
    assert path == str(so) and so.is_file() and so.parent.name == config.name
    assert info.startswith(f"isa: {config.isa} ")


def test_build_kernel_cli_failure(monkeypatch, capsys):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setenv("ACMIX_DISABLE_NATIVE", "1")
    assert main(["build-kernel"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "acmix build-kernel: the compiled CPU kernel is unavailable: disabled by ACMIX_DISABLE_NATIVE=1"


def test_build_kernel_cli_compiler_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("ACMIX_NATIVE_MARCH", "not-a-cpu")
    assert main(["build-kernel"]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # before it, at most torch's own CUDA_HOME notice
    assert last.startswith("acmix build-kernel: the compiled CPU kernel is unavailable: ") and "not-a-cpu" in last


# ---------------------------------------------------------------- the custom ops


@pytest.mark.parametrize("case", [OPS[0], pytest.param(OPS[1], marks=pytest.mark.slow)])
def test_opcheck_forward_and_backward(native_kernel, case):
    tensors, args = _op_inputs(*case, batch=1)
    torch.library.opcheck(native._stage2, (*tensors, *args))
    out = native._stage2(*tensors, *args)
    gout = torch.randn_like(out)
    plain = tuple(t.detach() if t is not None else None for t in tensors)
    torch.library.opcheck(native._stage2_backward, (gout, *plain, *args))


@pytest.mark.parametrize("case", OPS)
def test_compiled_kernel_gradcheck(native_kernel, case):
    tensors, args = _op_inputs(*case)
    assert torch.autograd.gradcheck(_op_fn(tensors, args), tuple(_present(tensors)), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", OPS)
def test_stage2_eager_matches_kernel(native_kernel, case):
    tensors, args = _op_inputs(*case, batch=3, seed=1)
    out = native._stage2(*tensors, *args)
    ref = native.stage2_eager(*tensors, *args)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(out)
    inputs = _present(tensors)
    want = torch.autograd.grad(ref, inputs, go, allow_unused=True)  # None: an unused rate
    for a, b, t in zip(torch.autograd.grad(out, inputs, go), want, inputs):
        torch.testing.assert_close(a, torch.zeros_like(t) if b is None else b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_inf_propagate_like_reference(native_kernel, value, dtype, tol):
    """IEEE semantics (no -ffast-math): the same outputs turn NaN/Inf as in the reference, the rest are equal."""
    layer = make_layer((4, 8, 2, 3, 3, 1, 1, {}), seed=2, dtype=dtype)
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(dtype)
    x[0, :, 2, 3] = value
    x[1, 1, 7, 8] = value
    out = acmix(x, layer.weights(), layer.config, backend=Backend.COMPILED)
    ref = acmix_reference(x.double(), make_layer((4, 8, 2, 3, 3, 1, 1, {}), seed=2).weights(), layer.config)
    assert 0 < ref.isnan().sum() < ref.numel()  # some outputs poisoned, not all
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, equal_nan=True)


# ---------------------------------------------------------------- second derivatives


# small maps, as gradgradcheck perturbs every input element; fast mode (random projections) where there are many
@pytest.mark.parametrize(("case", "fast"), [((2, 3, 3, 1, 1, (3, 4), True, True, True, True), True),
                                            ((1, 3, 1, 2, 2, (4, 3), True, True, True, False), False),
                                            pytest.param(OPS[0], False, marks=pytest.mark.slow),
                                            pytest.param(OPS[2], False, marks=pytest.mark.slow)])
def test_compiled_kernel_gradgradcheck(native_kernel, case, fast):
    tensors, args = _op_inputs(*case, batch=1, seed=3)
    assert torch.autograd.gradgradcheck(_op_fn(tensors, args), tuple(_present(tensors)), eps=1e-6, atol=1e-6,
                                        fast_mode=fast)


def test_create_graph_gradient_equals_kernel_gradient(native_kernel):
    tensors, args = _op_inputs(*OPS[0], seed=4)
    out = native._stage2(*tensors, *args)
    go = torch.randn_like(out)
    plain = torch.autograd.grad(out, _present(tensors), go, retain_graph=True)
    graph = torch.autograd.grad(out, _present(tensors), go, create_graph=True)
    assert all(g.requires_grad for g in graph)
    for a, b in zip(plain, graph):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _penalty_step(backend, entry, x):
    """One SGD step on ``mean(out^2) + |d out.sum() / dx|^2``: a gradient penalty, so a double backward."""
    layer = make_layer(entry, seed=5)
    x = x.clone().requires_grad_()
    with use_backend(backend):
        out = layer(x)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    loss = out.square().mean() + gx.square().sum()
    loss.backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    with torch.no_grad():
        for p in layer.parameters():
            p -= 0.1 * p.grad
    return loss.detach(), grads, [p.detach() for p in layer.parameters()]


@pytest.mark.parametrize("entry", [(4, 8, 2, 3, 3, 1, 1, {}), (4, 8, 2, 3, 3, 2, 1, {"conv_bias": True})])
def test_gradient_penalty_step_matches_eager(native_kernel, entry):
    x = torch.randn(3, 4, 9, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    compiled = _penalty_step(Backend.COMPILED, entry, x)
    eager = _penalty_step(Backend.EAGER, entry, x)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # from torch's jvp
def test_torch_func_transforms_match_reference(native_kernel):
    """grad, forward-over-reverse hvp, jacrev and vmap: the dispatcher leaves the op for the eager path."""
    layer = make_layer((4, 8, 2, 3, 3, 1, 1, {}), seed=7)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 9, 10, dtype=torch.float64, generator=g)
    v = torch.randn(x.shape, dtype=torch.float64, generator=g)

    def loss(x):
        return layer(x).square().sum()

    def run():
        return (grad(loss)(x), jvp(grad(loss), (x,), (v,))[1], jacrev(lambda x: layer(x)[0, :, 4, 5])(x),
                vmap(layer)(torch.stack([x, v])))

    got = run()
    with use_backend(Backend.REFERENCE):
        want = run()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
