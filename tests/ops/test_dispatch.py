"""The dispatcher: measured AUTO choice, backend names, validation once, NaN locality, bounded memory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from acmix import ACmix
from acmix.ops import Backend, acmix, acmix_reference, autotune, native, resolve_backend
from acmix.ops import fast as fast_mod
from acmix.ops.config import ACmixConfig
from helpers import make_layer


@pytest.fixture
def tuning(tmp_path, monkeypatch):
    monkeypatch.setenv("ACMIX_AUTOTUNE", "1")
    monkeypatch.setenv("ACMIX_CACHE_DIR", str(tmp_path))
    autotune.clear()
    yield tmp_path / "dispatch.json"
    autotune.clear()


def test_backend_names_and_alias():
    assert Backend("compiled") is Backend.CPU_KERNEL
    assert Backend.COMPILED is Backend.CPU_KERNEL
    assert Backend("cpu_kernel") is Backend.CPU_KERNEL
    with pytest.raises(ValueError, match="backend='gpu' is not one of 'auto', 'reference', 'eager', 'cpu_kernel'"):
        resolve_backend(torch.randn(1, 4, 5, 5), ACmixConfig(4, 8), "gpu")


def test_triton_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="backend='triton' needs Triton and a CUDA tensor"):
        resolve_backend(torch.randn(1, 4, 5, 5), ACmixConfig(4, 8), "triton")


def test_triton_fit_judged_in_the_dtype_the_kernels_see(monkeypatch):
    """The shared-memory check of the compiled kernels (here on CPU tensors posing as compiled) uses autocast's
    dtype, which q, k and v come out of Stage I in, and does not apply when no attention kernel runs."""
    from acmix.ops import triton_attention

    monkeypatch.setattr(triton_attention, "available", lambda x: True)
    monkeypatch.setattr(triton_attention, "interpret_on", lambda x: False)
    x = torch.randn(1, 8, 9, 9)
    wide = ACmixConfig(8, 512, heads=2)  # head dim 256: float32 tiles overflow, bf16 ones fit
    with pytest.raises(ValueError, match="head dim 256"):
        resolve_backend(x, wide, "triton")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_backend(x, wide, "triton") is Backend.TRITON
    x64 = x.double()
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(ValueError, match="head dim 256"):
        resolve_backend(x64, wide, "triton")  # autocast leaves float64 alone
    assert resolve_backend(x64, ACmixConfig(8, 512, heads=2, combination="conv"), "triton") is Backend.TRITON


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_triton_only_where_its_tiles_fit():
    """float64 at head dim 128: the kernels' smallest tile overflows shared memory, so AUTO takes the eager
    path and an explicit request is refused in one line; head dim 64 runs the kernels."""
    x = torch.randn(1, 8, 9, 9, device="cuda", dtype=torch.float64)
    assert resolve_backend(x, ACmixConfig(8, 256, heads=2)) is Backend.EAGER
    with pytest.raises(ValueError, match="head dim 128"):
        resolve_backend(x, ACmixConfig(8, 256, heads=2), "triton")
    assert resolve_backend(x, ACmixConfig(8, 128, heads=2)) is Backend.TRITON


@pytest.mark.skipif(not native.available(), reason="no C++ compiler: only one CPU path")
def test_auto_measures_once_and_remembers(tuning, monkeypatch):
    layer = make_layer((4, 8, 4, 7, 3, 1, 1, {}), dtype=torch.float32)
    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    calls = []
    real = autotune._time

    def counting(run, device):
        calls.append(1)
        return real(run, device)

    monkeypatch.setattr(autotune, "_time", counting)
    chosen = resolve_backend(x, layer.config, weights=layer.weights())
    assert chosen in (Backend.CPU_KERNEL, Backend.EAGER)
    assert len(calls) == 6  # 3 rounds x 2 candidates
    assert x.grad is None and all(p.grad is None for p in layer.parameters())  # measuring leaves no trace
    assert resolve_backend(x, layer.config, weights=layer.weights()) is chosen
    assert len(calls) == 6  # remembered
    saved = json.loads(tuning.read_text())
    (machine, choices), = saved.items()
    assert "torch" in machine and list(choices.values()) == [chosen.value]
    assert "train" in next(iter(choices))
    autotune.clear()  # a new process: read from the file, not measured again
    assert resolve_backend(x, layer.config, weights=layer.weights()) is chosen
    assert len(calls) == 6
    with torch.no_grad():  # inference is a different signature
        resolve_backend(x, layer.config, weights=layer.weights())
    assert len(calls) == 12


@pytest.mark.skipif(not native.available(), reason="no C++ compiler: only one CPU path")
def test_auto_measured_result_is_exact(tuning):
    layer = make_layer((4, 8, 4, 7, 3, 1, 1, {}), dtype=torch.float64)
    x = torch.randn(1, 4, 11, 10, dtype=torch.float64)
    out = layer(x)
    torch.testing.assert_close(out, acmix_reference(x, layer.weights(), layer.config), rtol=1e-10, atol=1e-10)


def test_auto_cache_unwritable_keeps_working(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("ACMIX_AUTOTUNE", "1")
    monkeypatch.setenv("ACMIX_CACHE_DIR", str(blocker / "sub"))  # a file where a folder should be
    autotune.clear()
    try:
        with pytest.warns(RuntimeWarning, match="cannot write the backend cache"):
            autotune._warned = False
            winner = autotune.choose("k", {"a": lambda: None, "b": lambda: None}, torch.device("cpu"), rounds=1)
        assert winner in ("a", "b")
    finally:
        autotune.clear()


# ---------------------------------------------------------------- validation: one line naming the value


def test_input_errors_name_the_value():
    layer = ACmix(4, 8)
    with pytest.raises(ValueError, match=r"x has dtype torch.float64 but the layer's weights are torch.float32"):
        layer(torch.randn(1, 4, 6, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must be a torch.Tensor, got numpy.ndarray"):
        layer(np.zeros((1, 4, 6, 6), dtype=np.float32))
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor, got dtype torch.int64"):
        layer(torch.zeros(1, 4, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x must be a floating-point tensor, got dtype torch.bool"):
        layer(torch.zeros(1, 4, 6, 6, dtype=torch.bool))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts float32/16 (not float64)
        assert torch.isfinite(layer(torch.randn(1, 4, 6, 6, dtype=torch.float16))).all()
        with pytest.raises(ValueError, match=r"x has dtype torch.float64"):
            layer(torch.randn(1, 4, 6, 6, dtype=torch.float64))


def test_config_checks_and_numpy_ints():
    cfg = ACmixConfig(np.int64(16), np.int32(16), heads=np.int64(4))
    assert cfg.in_channels == 16 and type(cfg.in_channels) is int and type(cfg.heads) is int
    with pytest.raises(ValueError, match=r"position_encoding must be a bool, got 'no'"):
        ACmixConfig(4, 8, position_encoding="no")
    with pytest.raises(ValueError, match=r"kernel_att must be odd, got 4"):
        ACmixConfig(4, 8, kernel_att=4)
    with pytest.raises(ValueError, match=r"stride must be a positive int, got 1.5"):
        ACmixConfig(4, 8, stride=1.5)
    with pytest.raises(ValueError, match=r"heads must be a positive int, got True"):
        ACmixConfig(4, 8, heads=True)


# ---------------------------------------------------------------- NaN locality and large dilation


def _windows_hit(h, w, py, px, cfg):
    """Brute force: which outputs' windows contain pixel (py, px) (reflect semantics)."""
    from acmix.ops.common import reflect_index

    pad = cfg.att_padding
    ry, rx = reflect_index(h, pad), reflect_index(w, pad)
    ho, wo = cfg.output_size(h, w)
    hit = torch.zeros(ho, wo, dtype=torch.bool)
    for i in range(ho):
        for j in range(wo):
            ys = ry[i * cfg.stride + torch.arange(cfg.kernel_att) * cfg.dilation]
            xs = rx[j * cfg.stride + torch.arange(cfg.kernel_att) * cfg.dilation]
            hit[i, j] = bool((ys == py).any() and (xs == px).any())
    return hit


@pytest.mark.parametrize("size,stride,dilation,mode", [
    ((9, 8), 1, 1, "global"), ((20, 19), 1, 1, "tiled"), ((17, 15), 2, 1, "tiled"), ((18, 16), 1, 6, "gather"),
])
def test_nan_stays_in_its_windows(size, stride, dilation, mode, monkeypatch):
    if mode != "global":
        monkeypatch.setattr(fast_mod, "GLOBAL_MAX", 0)
    h, w = size
    layer = make_layer((4, 8, 2, 3, 3, stride, dilation, {"combination": "attention"}), dtype=torch.float64)
    x = torch.randn(1, 4, h, w, dtype=torch.float64)
    x[0, :, 4, 5] = math.nan
    ref = acmix_reference(x, layer.weights(), layer.config)
    out = acmix(x, layer.weights(), layer.config, backend="eager")
    expect_nan = _windows_hit(h, w, 4, 5, layer.config)
    assert torch.equal(ref[0, 0].isnan(), expect_nan)  # the oracle's own behaviour
    assert torch.equal(out.isnan().any(1)[0], expect_nan)
    finite = ~expect_nan
    torch.testing.assert_close(out[..., finite], ref[..., finite], rtol=1e-10, atol=1e-10)


def _assert_matches_reference(layer, x, backend, tol=1e-10):
    """Values and the gradients of the input and every parameter, in float64."""
    x = x.requires_grad_()
    out = acmix(x, layer.weights(), layer.config, backend=backend)
    ref = acmix_reference(x, layer.weights(), layer.config)
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    go = torch.randn_like(out)
    params = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(out, params, go), torch.autograd.grad(ref, params, go)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_large_dilation_gathers_windows_exactly(monkeypatch):
    monkeypatch.setattr(fast_mod, "GLOBAL_MAX", 0)
    layer = make_layer((4, 8, 2, 7, 3, 2, 9, {}), dtype=torch.float64)
    _assert_matches_reference(layer, torch.randn(2, 4, 13, 11, dtype=torch.float64), "eager")


def test_huge_dilation_memory_is_bounded():
    """dilation 1000 on a 64x64 map: the halo tiles would need hundreds of GB; the gathered windows a few MB."""
    layer = ACmix(8, 8, heads=2, dilation=1000)
    x = torch.randn(1, 8, 64, 64)
    out = acmix(x, layer.weights(), layer.config, backend="eager")
    assert out.shape == (1, 8, 64, 64) and torch.isfinite(out).all()


# ---------------------------------------------------------------- the layer on the Triton backend (interpreter)


@pytest.mark.parametrize("entry", [
    (5, 8, 4, 7, 3, 1, 1, {}),
    (5, 8, 4, 7, 3, 2, 1, {"conv_bias": True}),
    (4, 8, 2, 3, 3, 1, 2, {"combination": "attention"}),
    (4, 8, 2, 3, 3, 2, 1, {"position_encoding": False, "shift": "learnable"}),
], ids=["default", "stride2-bias", "attention-dil2", "nope-learnable"])
def test_layer_on_triton_matches_reference(entry, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    layer = make_layer(entry, dtype=torch.float64, seed=1)
    x = torch.randn(2, entry[0], 9, 7, dtype=torch.float64)
    assert resolve_backend(x, layer.config, "triton") is Backend.TRITON
    _assert_matches_reference(layer, x, "triton", tol=1e-9)


def test_auto_leaves_the_interpreter_to_explicit_requests(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors could run interpreted, but only when asked for
    assert resolve_backend(torch.randn(1, 4, 9, 9), ACmixConfig(4, 8)) is not Backend.TRITON
    assert resolve_backend(torch.randn(1, 4, 9, 9), ACmixConfig(4, 8), "triton") is Backend.TRITON


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_picks_triton_on_cuda_and_matches_reference():
    pytest.importorskip("triton")
    layer = make_layer((8, 16, 4, 7, 3, 1, 1, {}), dtype=torch.float32, device="cuda", seed=2)
    x = torch.randn(2, 8, 20, 17, device="cuda")
    assert resolve_backend(x, layer.config) is Backend.TRITON
    assert resolve_backend(x, ACmixConfig(8, 16, combination="conv")) is Backend.EAGER
    ref_layer = make_layer((8, 16, 4, 7, 3, 1, 1, {}), dtype=torch.float64, seed=2)
    ref = acmix_reference(x.double().cpu(), ref_layer.weights(), ref_layer.config)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # cuDNN's float32 convs default to TF32
        out = layer(x)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "eager", "auto", "cpu_kernel", "triton"])
def test_empty_batch_like_conv2d(backend, monkeypatch):
    if backend == "cpu_kernel" and not native.available():
        pytest.skip("no C++ compiler")
    if backend == "triton":  # nothing to launch: an explicit triton gives the eager path's empty output
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    layer = make_layer((4, 8, 4, 7, 3, 2, 1, {}), dtype=torch.float64)
    x = torch.randn(0, 4, 9, 7, dtype=torch.float64, requires_grad=True)
    out = acmix(x, layer.weights(), layer.config, backend=backend)
    assert out.shape == (0, 8, 5, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_weight_kinds_and_containers_name_the_value():
    """Every weight shares q_weight's dtype and device and is a tensor; the containers are the op's types."""
    layer = ACmix(4, 8, kernel_att=3, heads=2)
    w, cfg, x = layer.weights(), layer.config, torch.randn(1, 4, 6, 5)
    bad = [
        (w._replace(k_weight=w.k_weight.double()), r"k_weight is torch.float64 on cpu but q_weight is torch.float32"),
        (w._replace(v_bias=w.v_bias.double()), r"v_bias is torch.float64"),
        (w._replace(conv_weight=w.conv_weight.to("meta")), r"conv_weight is torch.float32 on meta"),
        (w._replace(rate_att=0.5), r"rate_att must be a torch.Tensor or None, got builtins.float"),
        (w._replace(q_bias=w.q_bias.detach().numpy()), r"q_bias must be a torch.Tensor or None, got numpy.ndarray"),
        (w._replace(q_weight=w.q_weight.detach().numpy()), r"q_weight must be a torch.Tensor, got numpy.ndarray"),
        (w._replace(pe_bias=torch.zeros(7)), r"pe_bias has shape \(7,\), expected \(4,\)"),
    ]
    for weights, match in bad:
        for backend in ("reference", None):
            with pytest.raises(ValueError, match=match):
                acmix(x, weights, cfg, backend=backend)
    with pytest.raises(TypeError, match=r"weights must be an ACmixWeights .*, got tuple"):
        acmix(x, tuple(w), cfg)
    with pytest.raises(TypeError, match=r"config must be an ACmixConfig .*, got dict"):
        acmix(x, w, {"in_channels": 4})
