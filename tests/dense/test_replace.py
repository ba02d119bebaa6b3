"""acmix.nn.replace_convs: which layers it swaps, exactness against a hand-built network, dtypes and formats."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from yolo_net import TinyYolo

from acmix import ACmix
from acmix.nn.replace import choose_heads, replace_convs
from helpers import randomize_


def _resnet18_reference() -> nn.Module:
    """resnet18 with every BasicBlock's 3x3 convs set to ACmix by hand (the stem's 7x7 stays)."""
    net = resnet18(num_classes=10)
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            c_in, c_out = block.conv1.in_channels, block.conv1.out_channels
            block.conv1 = ACmix(c_in, c_out, heads=4, stride=block.conv1.stride[0])
            block.conv2 = ACmix(c_out, c_out, heads=4)
    return net


def _yolo_reference() -> nn.Module:
    """TinyYolo(width=16) with its 3x3 convs (stem 3->16 gets 4 heads, bottlenecks 4) set to ACmix by hand."""
    net = TinyYolo(16)
    net.stem.conv = ACmix(3, 16, heads=4, stride=2)
    net.down1.conv = ACmix(16, 32, heads=4, stride=2)
    net.down2.conv = ACmix(32, 64, heads=4, stride=2)
    for c2f in (net.c2f1, net.c2f2):
        for b in c2f.m:
            b.cv1.conv = ACmix(c2f.c, c2f.c, heads=4)
            b.cv2.conv = ACmix(c2f.c, c2f.c, heads=4)
    return net


@pytest.mark.parametrize(("make", "reference", "count"), [
    (lambda: resnet18(num_classes=10), _resnet18_reference, 16),
    (lambda: TinyYolo(16), _yolo_reference, 7),
], ids=["resnet18", "yolo"])
def test_forward_equals_explicit_construction(make, reference, count):
    net = make()
    done = replace_convs(net)
    assert len(done) == count
    assert all(isinstance(net.get_submodule(r.name), ACmix) for r in done)
    net = randomize_(net.double()).eval()
    ref = reference().double().eval()
    ref.load_state_dict(net.state_dict())  # strict: same layers, same shapes
    x = torch.randn(3, 3, 37, 45, dtype=torch.float64)
    with torch.no_grad():
        out, want = net(x), ref(x)
    for a, b in zip(out if isinstance(out, tuple) else (out,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_selection_by_predicate_and_names():
    net = TinyYolo(16)
    done = replace_convs(net, include=lambda name, conv: conv.stride == (2, 2) and conv.in_channels > 3)
    assert [r.name for r in done] == ["down1.conv", "down2.conv"]
    net = TinyYolo(16)
    done = replace_convs(net, include=["c2f1.m.0.cv2.conv", "head8"], heads=lambda name, conv: 2)
    assert [r.name for r in done] == ["c2f1.m.0.cv2.conv", "head8"]
    assert net.head8.config.kernel_conv == 1 and net.head8.config.heads == 2
    assert net.head8.conv_bias is not None  # the conv had a bias


def test_heads_divide_width_and_errors_name_the_layer(capsys):
    assert choose_heads(24, 5) == 4 and choose_heads(7, 4) == 1 and choose_heads(2, 8) == 2
    net = TinyYolo(10)  # at most 8 heads: widths 10 -> 5, 20 -> 5, 40 -> 8
    replace_convs(net, heads=8, verbose=True)
    assert [net.stem.conv.config.heads, net.c2f1.m[0].cv1.conv.config.heads, net.down2.conv.config.heads] == [5, 5, 8]
    assert "c2f1.m.0.cv1.conv: Conv2d(10, 10, 3x3" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"^down1\.conv: heads=5 does not divide out_channels=24"):
        net = TinyYolo(12)
        replace_convs(net, heads=lambda name, conv: 4 if name == "stem.conv" else 5)
    assert isinstance(net.stem.conv, nn.Conv2d)  # refused before the first swap
    bad = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    with pytest.raises(ValueError, match=r"^1: groups=8"):
        replace_convs(bad)
    with pytest.raises(ValueError, match=r"^0: padding=\(0, 0\)"):
        replace_convs(nn.Sequential(nn.Conv2d(8, 8, 3)))
    with pytest.raises(ValueError, match=r"^0: dilation=\(2, 2\)"):
        replace_convs(nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2)))
    with pytest.raises(ValueError, match=r"'nope' is not an nn.Conv2d"):
        replace_convs(bad, include=["nope"])
    assert isinstance(bad[0], nn.Conv2d)  # nothing replaced when a check fails


@pytest.mark.parametrize("make", [lambda: resnet18(num_classes=10), lambda: TinyYolo(16)], ids=["resnet18", "yolo"])
def test_half_channels_last_and_amp(make):
    torch.manual_seed(0)
    net = make()
    replace_convs(net)
    net.eval()
    x = torch.randn(2, 3, 41, 35)
    with torch.no_grad():
        ref = net(x)
        half = net.half()(x.half())
        net.float()
        cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    for r, h, c in zip(*(t if isinstance(t, tuple) else (t,) for t in (ref, half, cl))):
        assert h.dtype == torch.float16 and torch.isfinite(h).all()
        torch.testing.assert_close(h.float(), r, rtol=0.05, atol=0.05 * r.abs().max().item())
        torch.testing.assert_close(c, r, rtol=1e-4, atol=1e-4)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
            loss = sum(o.float().square().mean() for o in (out if isinstance(out, tuple) else (out,)))
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        opt.step()


def test_host_bn_folding_keeps_outputs():
    torch.manual_seed(0)
    net = TinyYolo(16)
    replace_convs(net, include=lambda name, conv: name.startswith("c2f"))
    net = randomize_(net.double())
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.abs_().add_(0.5)
    net.eval()
    x = torch.randn(1, 3, 29, 33, dtype=torch.float64)
    with torch.no_grad():
        before = net(x)
        assert net.fuse() == 7  # stem, down1, down2 and the C2f 1x1s; the 4 ACmix units keep their BN
        assert isinstance(net.c2f1.m[0].cv1.bn, nn.BatchNorm2d) and isinstance(net.stem.bn, nn.Identity)
        after = net(x)
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b)


def test_argument_types_name_the_value():
    """A string ``include`` is not a list of one-character names; ``kernel_size`` 0 or '3' matched nothing,
    ``heads=True`` meant 1 and ``heads=2.5`` failed in ``range``."""
    def net() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))

    for kwargs, error, match in [
        ({"include": "01"}, TypeError, r"include must be a list of conv names or a predicate, got the string '01'"),
        ({"kernel_size": 0}, ValueError, r"kernel_size must be a positive int, got 0"),
        ({"kernel_size": "3"}, ValueError, r"kernel_size must be a positive int, got '3'"),
        ({"kernel_size": 2}, ValueError, r"kernel_size must be odd, got 2"),
        ({"heads": True}, ValueError, r"heads must be a positive int, got True"),
        ({"heads": 2.5}, ValueError, r"heads must be a positive int, got 2.5"),
    ]:
        model = net()
        with pytest.raises(error, match=f"^{match}$"):
            replace_convs(model, **kwargs)
        assert all(isinstance(m, nn.Conv2d) for m in model)
    with pytest.raises(TypeError, match=r"^model must be an nn.Module, got str$"):
        replace_convs("resnet18")
    model = net()
    assert [r.name for r in replace_convs(model, include=["1"])] == ["1"] and isinstance(model[1], ACmix)
