"""segmentation_model: smp decoders on tu-acmix_* encoders, output_stride where the family dilates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import TINY

from acmix.dense import dilatable, segmentation_model

pytest.importorskip("segmentation_models_pytorch", reason="segmentation-models-pytorch (the dev extra) not installed")

DECODERS = {"acmix_resnet26": "DeepLabV3Plus", "acmix_san10": "Unet", "acmix_pvt_tiny": "FPN",
            "acmix_swin_tiny": "UPerNet"}


def _step(model, h: int, w: int) -> None:
    x = torch.rand(2, 3, h, w)
    y = torch.randint(0, 3, (2, h, w))
    model.train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.encoder.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, h, w) and torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "arch"), list(DECODERS.items()))
def test_one_decoder_per_family(name, arch):
    torch.manual_seed(0)
    _step(segmentation_model(arch, name, classes=3, **TINY[name]), 64, 96)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["Unet", "FPN", "UPerNet", "DeepLabV3Plus"])
@pytest.mark.parametrize("name", list(TINY))
def test_every_decoder(arch, name):
    if arch.startswith("DeepLab") and not dilatable(name):
        pytest.skip(f"{name} cannot dilate (tested in test_output_stride_refused)")
    _step(segmentation_model(arch, name, classes=3, **TINY[name]), 128, 160)


@pytest.mark.parametrize("stride", [16, 8])
def test_resnet_output_stride(stride):
    model = segmentation_model("DeepLabV3Plus", "acmix_resnet26", output_stride=stride, classes=3)
    with torch.no_grad():
        feats = model.encoder(torch.rand(1, 3, 64, 96))
    assert feats[-1].shape[-2:] == (64 // stride, 96 // stride)


@pytest.mark.parametrize("name", ["acmix_san10", "acmix_pvt_tiny", "acmix_swin_tiny"])
def test_output_stride_refused(name):
    assert not dilatable(name)
    with pytest.raises(ValueError, match=rf"{name} cannot run at output_stride=16"):
        segmentation_model("DeepLabV3Plus", name)
    with pytest.raises(ValueError, match=r"only smp's DeepLabV3 / DeepLabV3Plus dilate"):
        segmentation_model("Unet", name, output_stride=8)


def test_unknown_names_get_one_line():
    """timm's RuntimeError for an unknown model and smp's KeyError for an unknown decoder become ValueErrors."""
    with pytest.raises(ValueError, match=r"^unknown model 'nope'$"):
        dilatable("nope")
    with pytest.raises(ValueError, match=r"^Wrong architecture type `nope`"):
        segmentation_model("nope", "acmix_resnet_tiny")
