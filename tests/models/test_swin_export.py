"""Swin-ACmix for export: size-generic pieces against their eager definitions, ONNX parity, compile.

The block computes its window, shift, padding and mask without branching on the map
size (``axis_window``, ``pad_roll`` / ``unroll_crop`` as gathers, the mask from
``arange`` comparisons) and gives SDPA 4-D inputs; each piece is held here to the
plain definition it replaces, and the model to onnxruntime.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import acmix  # noqa: F401
from acmix.export import check_onnx, dynamic_input_dims, export_onnx
from acmix.models._swin_windows import axis_window, pad_roll, shifted_window_mask, unroll_crop

SMALL = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), num_classes=10)


@pytest.mark.parametrize("size", [1, 5, 7, 8, 14, 15, 30])
def test_axis_window_is_one_window_up_to_the_window_size(size):
    win, shift = axis_window(size, 7, 3)
    assert (win, shift) == ((size, 0) if size <= 7 else (7, 3))
    assert axis_window(size, 7, 0) == (min(size, 7), 0)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize(("size", "padded", "shift"), [(10, 14, 3), (14, 14, 3), (5, 5, 0), (9, 14, 0), (1, 7, 3)])
def testpad_roll_andunroll_crop_arepad_roll_and_its_inverse(dim, size, padded, shift):
    shape = [3, 6, 6, 4]
    shape[dim] = size
    x = torch.randn(shape, dtype=torch.float64)
    pad = [0, 0, 0, 0, 0, 0]
    pad[2 * (3 - dim) + 1] = padded - size  # F.pad counts from the last dim
    ref = torch.roll(F.pad(x, pad), -shift, dim)
    out = pad_roll(x, dim, size, padded, shift)
    assert torch.equal(out, ref)
    assert torch.equal(unroll_crop(out, dim, size, padded, shift), x)


def _authors_mask(h, w, ws, shift):
    """Swin's mask as the authors build it: nine slice regions, windows row-major, -100 across regions."""
    ids = torch.zeros(h, w)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            ids[hs, wsl] = cnt
            cnt += 1
    win = ids.view(h // ws, ws, w // ws, ws).transpose(1, 2).reshape(-1, ws * ws)
    return (win[:, None, :] != win[:, :, None]).double() * -100.0


@pytest.mark.parametrize(("h", "w"), [(14, 21), (7, 14), (28, 7)])
def test_shifted_window_mask_is_the_authors(h, w):
    mask = shifted_window_mask(h, w, 7, 7, 3, 3, dtype=torch.float64)
    assert torch.equal(mask, _authors_mask(h, w, 7, 3))
    # an axis of one unshifted window adds no region: no shift at all leaves no mask
    assert not shifted_window_mask(h, w, 7, 7, 0, 0, dtype=torch.float64).any()


def _onnx_session(model, example, **kwargs):
    import onnxruntime as ort

    start = time.perf_counter()
    program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, **kwargs)
    seconds = time.perf_counter() - start
    session = ort.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session, seconds


def _ort_matches(session, model, x, tol):
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=tol, atol=tol)


def _check_dynamic_batch(name, model, tol, size=(160, 200)):
    """Export at batch 2 with a dynamic batch; onnxruntime at batch 1 and 3 against eager."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    x = torch.randn(2, 3, *size)
    session, seconds = _onnx_session(model, x, dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=256)},))
    print(f"{name}: dynamo ONNX export {seconds:.1f} s")
    assert session.get_inputs()[0].shape == ["batch", 3, *size]
    for batch in (1, 3):
        _ort_matches(session, model, torch.randn(batch, 3, *size), tol)


def test_onnx_with_dynamic_height_and_width_matches_onnxruntime(tmp_path):
    """A two-stage model through ``acmix.export`` (dynamic batch, H, W): onnxruntime at three sizes
    within 1e-5 of eager, sizes at which different stages have one window per axis, or need padding."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = timm.create_model("acmix_swin_tiny", embed_dim=32, depths=(1, 1), num_heads=(2, 2),
                              num_classes=10).eval()
    path = export_onnx(model, torch.randn(2, 3, 64, 72), tmp_path / "swin.onnx")
    assert dynamic_input_dims(path) == [True, False, True, True]
    # 64x72: several windows in both stages; 37x90: one window along H in stage 2; 120x20: one along W in both
    results = check_onnx(model, path, [(2, 3, 64, 72), (1, 3, 37, 90), (3, 3, 120, 20)], rtol=1e-5)
    assert len(results) == 3


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kwargs"), [("acmix_swin_tiny", SMALL), ("conv_swin_tiny", SMALL),
                                              ("acmix_swin_tiny", {}), ("conv_swin_tiny", {})])
def test_more_onnx_dynamo_exports_match_onnxruntime(name, kwargs):
    """A fixed H and W with only the batch dynamic; the full-size models at 224x224 (ORT within 1e-4)."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    _check_dynamic_batch(name, model, 1e-5 if kwargs else 1e-4, size=(160, 200) if kwargs else (224, 224))


@pytest.mark.slow  # ~40 s of tracing
def test_dynamic_compile_builds_one_graph_for_every_size():
    """``torch.compile(dynamic=True)`` with duck sizing off and size-oblivious tracing (README): new batch
    sizes, H and W, with one window per axis in different stages, reuse the first graph; outputs equal eager."""
    import torch.fx.experimental._config as fx_config
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = timm.create_model("acmix_swin_tiny", embed_dim=32, depths=(1, 1), num_heads=(2, 2),
                              num_classes=10).eval()
    compiled = torch.compile(model, backend="aot_eager", dynamic=True, fullgraph=True)
    with fx_config.patch(use_duck_shape=False, backed_size_oblivious=True), torch.no_grad():
        for b, h, w in [(2, 64, 72), (1, 37, 90), (3, 120, 20), (2, 31, 29)]:
            x = torch.randn(b, 3, h, w)
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 1
