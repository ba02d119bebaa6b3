"""ResNet-ACmix and its baselines: structure, init, and loading the authors' (torchvision) layout."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import acmix  # noqa: F401
from acmix import ACmix
from acmix.models import acmix_resnet
from acmix.ops import shift_kernel
from helpers import randomize_


def _acmix_layers(model: nn.Module) -> list[ACmix]:
    return [m for m in model.modules() if isinstance(m, ACmix)]


@pytest.mark.parametrize("depth, blocks", [(26, (1, 2, 4, 1)), (38, (2, 3, 5, 2)), (50, (3, 4, 6, 3))])
def test_structure_matches_the_authors_resnet(depth, blocks):
    with torch.device("meta"):
        model = timm.create_model(f"acmix_resnet{depth}")
        sasa = timm.create_model(f"sasa_resnet{depth}")
        conv = timm.create_model(f"conv_resnet{depth}")
    stem = model.stem.conv1.conv
    assert (stem.kernel_size, stem.stride, stem.out_channels) == ((7, 7), (2, 2), 64)
    assert isinstance(model.stem.pool, nn.MaxPool2d)
    assert tuple(len(s) for s in model.stages) == blocks
    layers = _acmix_layers(model)
    assert len(layers) == sum(blocks)
    widths = [64] * blocks[0] + [128] * blocks[1] + [256] * blocks[2] + [512] * blocks[3]
    strides = [2 if i > 0 and j == 0 else 1 for i, n in enumerate(blocks) for j in range(n)]
    for layer, width, stride in zip(layers, widths, strides):
        c = layer.config
        assert (c.in_channels, c.out_channels, c.heads, c.kernel_att, c.kernel_conv, c.stride) == (
            width, width, 4, 7, 3, stride)
        assert c.combination.value == "learned"
    sasa_layers = _acmix_layers(sasa)
    assert [(m.config.heads, m.config.combination.value) for m in sasa_layers] == [(8, "attention")] * sum(blocks)
    assert not _acmix_layers(conv)
    assert conv.stages[1][0].conv2_kxk.conv.stride == (2, 2)


def test_shift_init_survives_the_generic_init():
    model = timm.create_model("acmix_resnet26")
    for layer in _acmix_layers(model):
        w = layer.dep_conv.weight
        assert torch.equal(w, shift_kernel(3).expand_as(w))
        assert layer.rate1.item() == 0.5 and layer.rate2.item() == 0.5
    # residual BNs are not zero-initialised (authors' torchvision init) unless asked
    assert model.stages[0][0].conv3_1x1.bn.weight.eq(1).all()
    zero = timm.create_model("conv_resnet26", zero_init_last=True)
    assert zero.stages[0][0].conv3_1x1.bn.weight.eq(0).all()


def test_conv_resnet26_is_torchvision_resnet(tmp_path):
    """The conv baseline is torchvision's ResNet (depths 1, 2, 4, 1), weight for weight, through the filter."""
    tv = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 2, 4, 1])
    tv = randomize_(tv, seed=3).eval()
    for m in tv.modules():  # keep BN statistics sane
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.abs_().add_(0.5)
    path = tmp_path / "resnet26_tv.pth"
    torch.save(tv.state_dict(), path)
    model = timm.create_model("conv_resnet26", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), rtol=1e-4, atol=1e-4)


class _AuthorsBottleneck(torchvision.models.resnet.Bottleneck):
    """torchvision's bottleneck with ``conv2`` an ACmix layer: the authors' ResNet-ACmix block."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, *args, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, *args, **kwargs)
        width = self.conv2.in_channels
        self.conv2 = ACmix(width, width, kernel_att=7, heads=4, kernel_conv=3, stride=stride)


def _authors_resnet26() -> nn.Module:
    net = torchvision.models.resnet.ResNet(_AuthorsBottleneck, [1, 2, 4, 1])
    randomize_(net, seed=5)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.abs_().add_(0.5)
    return net.eval()


def test_authors_layout_checkpoint_loads_and_matches(tmp_path):
    """A state dict in the authors' layout (DataParallel training dict) gives the authors' outputs."""
    authors = _authors_resnet26()
    sd = authors.state_dict()
    assert "layer2.0.conv2.dep_conv.weight" in sd and "layer2.0.conv2.rate1" in sd
    path = tmp_path / "resnet_acmix_26.pth"
    torch.save({"epoch": 99, "state_dict": {"module." + k: v for k, v in sd.items()}, "best_acc1": 76.1}, path)
    model = timm.create_model("acmix_resnet26", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), authors(x), rtol=1e-4, atol=1e-4)

    # another head size: the classifier is re-initialised, everything else loads
    ten = timm.create_model("acmix_resnet26", pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert ten.head.fc.out_features == 10
    torch.testing.assert_close(ten.stages[3][0].self_attn.dep_conv.weight, authors.layer4[0].conv2.dep_conv.weight)


def test_filter_maps_every_authors_key_and_passes_own_layout_through():
    authors = _authors_resnet26()
    model = timm.create_model("acmix_resnet26")
    mapped = acmix_resnet.checkpoint_filter_fn(authors.state_dict(), model)
    assert set(mapped) == set(model.state_dict())
    own = model.state_dict()
    assert acmix_resnet.checkpoint_filter_fn(own, model).keys() == own.keys()


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="kind='bogus'"):
        acmix_resnet._resnet_cfg(26, "bogus")
    with pytest.raises(ValueError, match="heads=5"):
        timm.create_model("acmix_resnet26", acmix_kwargs=dict(heads=5))
    with pytest.raises(ValueError, match="acmix_kwargs"):
        timm.create_model("conv_resnet26", acmix_kwargs=dict(heads=4))


def test_acmix_kwargs_reach_every_layer():
    with torch.device("meta"):
        model = timm.create_model("acmix_resnet26", acmix_kwargs=dict(shift="fixed", combination="fixed"))
    layers = _acmix_layers(model)
    assert {(m.config.shift.value, m.config.combination.value, m.config.heads) for m in layers} == {
        ("fixed", "fixed", 4)}


def test_runs_at_other_sizes_and_in_float64():
    model = timm.create_model("acmix_resnet26", dtype=torch.float64, num_classes=3).eval()
    assert all(p.dtype == torch.float64 for p in model.parameters())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96, dtype=torch.float64)).shape == (1, 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["acmix_resnet50", "sasa_resnet50", "conv_resnet50"])
def test_full_resolution_forward(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
