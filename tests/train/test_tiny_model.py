"""``acmix_resnet_tiny``: timm's model contract and the ACmix layers inside it."""

from __future__ import annotations

import pytest
import timm
import torch

from acmix import ACmix


def test_timm_contract() -> None:
    model = timm.create_model("acmix_resnet_tiny", widths=(4, 8, 16), heads=2).eval()
    assert model.pretrained_cfg["input_size"] == (1, 28, 28) and model.num_classes == 10 and model.in_chans == 1
    assert sum(isinstance(m, ACmix) for m in model.modules()) == 2
    x = torch.randn(2, 1, 28, 28)
    feats = model.forward_features(x)
    assert feats.shape == (2, 16, 7, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 16)
    assert torch.equal(model.forward_head(feats), model(x))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (2, 16, 7, 7)
    model.double().reset_classifier(4, global_pool="avg")  # the new head follows the model's dtype
    assert model(x.double()).shape == (2, 4) and model.get_classifier().weight.dtype == torch.float64
    with pytest.raises(ValueError, match="global_pool='max' is not one of 'avg', ''"):
        model.reset_classifier(4, global_pool="max")
    rgb = timm.create_model("acmix_resnet_tiny", in_chans=3, num_classes=5, widths=(0, 8, 16), heads=2)
    assert rgb(torch.randn(1, 3, 20, 20)).shape == (1, 5) and rgb.in_chans == 3


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="widths"):
        timm.create_model("acmix_resnet_tiny", widths=(8, 16))
    with pytest.raises(ValueError, match="kernel_att"):
        timm.create_model("acmix_resnet_tiny", kernel_att=(3, 5, 7))
