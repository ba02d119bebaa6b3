"""Export with dynamic batch/H/W: torch.export programs and ONNX files (onnxruntime parity, max |diff| <= 1e-4 x
max(1, the output's largest magnitude) in float32), for the ACmix layer and every model family."""

from __future__ import annotations

import pytest
import timm
import torch

from acmix import ACmix
from acmix.cli.export_model import main as export_model_main
from acmix.export import check_onnx, check_program, dynamic_input_dims, export_onnx, export_program
from helpers import randomize_

RTOL = 1e-4
SMALL = {
    "acmix_resnet_tiny": dict(in_chans=3),  # ResNet-form blocks around the ACmix layer
    "acmix_san10": dict(layers=(1, 1, 1, 1, 1), widths=(32, 32, 64, 64, 128), stem_chs=16, num_classes=10),
    "acmix_pvt_tiny": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8),
                           num_classes=10),
    "acmix_swin_tiny": dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), num_classes=10),
}
# second sizes off the patch grid, at batch 1; Swin's two sizes put one window per axis in different stages
SHAPES = {"acmix_resnet_tiny": [(2, 3, 28, 36), (1, 3, 45, 31)],
          "acmix_san10": [(2, 3, 64, 96), (1, 3, 96, 64)],
          "acmix_pvt_tiny": [(2, 3, 64, 96), (1, 3, 71, 67)],
          "acmix_swin_tiny": [(2, 3, 64, 72), (1, 3, 100, 45)]}
LEGACY = {"acmix_resnet_tiny", "acmix_san10"}  # PVT: layer_norm over a traced size fails in the legacy exporter


def _layer() -> ACmix:
    torch.manual_seed(0)
    return randomize_(ACmix(8, 8, heads=2, stride=2)).eval()


@pytest.mark.slow  # ~10-20 s of symbolic tracing
def test_layer_exported_program_runs_at_other_sizes():
    layer = _layer()
    program = export_program(layer, torch.randn(2, 8, 20, 23))
    results = check_program(layer, program, [(2, 8, 20, 23), (1, 8, 31, 9), (3, 8, 7, 44)], rtol=1e-5)
    assert [r.shape for r in results] == [(2, 8, 20, 23), (1, 8, 31, 9), (3, 8, 7, 44)]
    assert "ops.acmix" not in program.graph_module.code  # plain torch ops, not the C++ kernel


def test_layer_onnx_legacy_parity(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the dev extra) not installed")
    layer = _layer()
    path = export_onnx(layer, torch.randn(2, 8, 20, 23), tmp_path / "layer.onnx", dynamo=False)
    assert dynamic_input_dims(path) == [True, False, False, False]  # legacy: batch only
    results = check_onnx(layer, path, [(2, 8, 20, 23), (3, 8, 20, 23)], rtol=RTOL)
    assert all(r.ok(RTOL) for r in results)
    with pytest.raises(ValueError, match=r"input dims \[2, 3\] are fixed in the file"):
        check_onnx(layer, path, [(2, 8, 20, 23), (2, 8, 21, 9)])


def test_cli_refuses_bad_requests(capsys):
    assert export_model_main(["acmix_resnet_tiny"]) == 2
    assert "nothing to write" in capsys.readouterr().err
    assert export_model_main(["acmix_resnet_tiny", "--onnx", "model.pth"]) == 2
    assert "must end in .onnx" in capsys.readouterr().err


@pytest.mark.slow
def test_layer_onnx_dynamo_parity(tmp_path):
    pytest.importorskip("onnxscript", reason="onnxscript (the dev extra) not installed")
    layer = _layer()
    path = export_onnx(layer, torch.randn(2, 8, 20, 23), tmp_path / "layer.onnx")
    assert dynamic_input_dims(path) == [True, False, True, True]
    check_onnx(layer, path, [(2, 8, 20, 23), (1, 8, 31, 9)], rtol=RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMALL))
def test_family_export(name, tmp_path):
    pytest.importorskip("onnxscript", reason="onnxscript (the dev extra) not installed")
    torch.manual_seed(0)
    model = timm.create_model(name, **SMALL[name]).eval()
    shapes = SHAPES[name]
    example = torch.randn(shapes[0])
    check_program(model, export_program(model, example), shapes, rtol=1e-5)
    path = export_onnx(model, example, tmp_path / "m.onnx")
    assert dynamic_input_dims(path) == [True, False, True, True]
    check_onnx(model, path, shapes, rtol=RTOL)
    if name in LEGACY:
        legacy = export_onnx(model, example, tmp_path / "legacy.onnx", dynamo=False)
        check_onnx(model, legacy, shapes[:1], rtol=RTOL)


@pytest.mark.slow
def test_cli_writes_and_checks(tmp_path, capsys):
    pytest.importorskip("onnxscript", reason="onnxscript (the dev extra) not installed")
    onnx_path, pt2 = tmp_path / "m.onnx", tmp_path / "m.pt2"
    code = export_model_main(["acmix_resnet_tiny", "--model-kwargs", '{"in_chans": 3}', "--size", "28x28",
                              "--check-size", "40x33", "--onnx", str(onnx_path), "--exported-program", str(pt2)])
    out = capsys.readouterr().out
    assert code == 0 and onnx_path.is_file() and pt2.is_file()
    assert "onnxruntime vs PyTorch at 2x3x40x33" in out and "exported program vs PyTorch at 2x3x40x33" in out
    program = torch.export.load(pt2)
    assert program.module()(torch.randn(1, 3, 50, 29)).shape == (1, 10)


def test_bad_arguments_get_one_line(tmp_path):
    """Checked before any tracing: a model or example of another type, a missing folder, a file not ONNX."""
    layer = _layer()
    with pytest.raises(TypeError, match=r"^model must be an nn.Module, got function$"):
        export_program(lambda t: t, torch.randn(1, 8, 8, 8))
    with pytest.raises(TypeError, match=r"^example must be a 4-D \(B, C, H, W\) tensor, got ndarray$"):
        export_program(layer, torch.randn(1, 8, 8, 8).numpy())
    with pytest.raises(TypeError, match=r"got shape \(8, 8, 8\)$"):
        export_onnx(layer, torch.randn(8, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(FileNotFoundError, match=r"folder .*missing does not exist$"):
        export_onnx(layer, torch.randn(1, 8, 8, 8), tmp_path / "missing" / "m.onnx")
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match=r"g.onnx: not an ONNX model \(DecodeError\)$"):
        dynamic_input_dims(garbage)
