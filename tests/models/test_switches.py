"""The paper's ablation switches (``combination``, ``shift``) in every family, through one convolution path.

``ACmix``, Swin's window attention, PVT's spatial-reduction attention and SAN's
patchwise module share :class:`acmix.nn.parts.ConvPathMixer`; these tests hold each
of them to the same contract: the default keys are the authors', a single-path
combination is exactly that path of the mixed module, the four shift modes agree
at the shift init, and every mode builds and trains from ``timm.create_model``.
"""

from __future__ import annotations

import pytest
import timm
import torch

from acmix import ACmix
from acmix.models.acmix_pvt import SRAttention
from acmix.models.acmix_san import SAM
from acmix.models.acmix_swin import WindowAttentionACmix
from acmix.nn.parts import ConvPathMixer
from helpers import randomize_

F64 = torch.float64


def _swin(**kw):
    return WindowAttentionACmix(16, 2, 7, dtype=F64, **kw).eval(), (torch.randn(2, 14, 21, 16, dtype=F64), (7, 7))


def _pvt(**kw):
    return SRAttention(12, 3, sr_ratio=2, dtype=F64, **kw).eval(), (torch.randn(3, 6 * 4, 12, dtype=F64), (6, 4))


def _san(**kw):
    return SAM(32, 2, 8, share_planes=4, kernel_size=3, dtype=F64, **kw).eval(), (torch.randn(1, 32, 6, 5, dtype=F64),)


def _acmix(**kw):
    return ACmix(6, 8, heads=2, kernel_att=3, dtype=F64, **kw).eval(), (torch.randn(3, 6, 7, 5, dtype=F64),)


FAMILIES = {"swin": _swin, "pvt": _pvt, "san": _san, "acmix": _acmix}
CONV = {"fc.weight", "dep_conv.weight"}
RATES = {"rate1", "rate2"}
DEFAULT_KEYS = {  # the authors' names (PVT-ACmix and SAN-ACmix: no public code, the ACmix names)
    "swin": {"qkv.weight", "qkv.bias", "relative_position_bias_table", "proj.weight", "proj.bias", "fc.bias"},
    "pvt": {"q.weight", "q.bias", "kv.weight", "kv.bias", "sr.weight", "sr.bias", "norm.weight", "norm.bias",
            "proj.weight", "proj.bias"},
    "san": {*(f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")), "conv_w.0.weight", "conv_w.0.bias",
            "conv_w.0.running_mean", "conv_w.0.running_var", "conv_w.0.num_batches_tracked", "conv_w.2.weight",
            "conv_w.3.weight", "conv_w.3.bias", "conv_w.3.running_mean", "conv_w.3.running_var",
            "conv_w.3.num_batches_tracked", "conv_w.5.weight", "conv_w.5.bias"},
    "acmix": {*(f"conv{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")), "conv_p.weight", "conv_p.bias"},
}


@pytest.mark.parametrize("family", FAMILIES)
def test_default_keys_are_the_authors(family):
    module, _ = FAMILIES[family](acmix=True) if family in ("pvt", "san") else FAMILIES[family]()
    assert isinstance(module, ConvPathMixer)
    assert set(module.state_dict()) == DEFAULT_KEYS[family] | CONV | RATES
    assert {n for n, _ in module.named_parameters()} >= CONV | RATES


@pytest.mark.parametrize("family", FAMILIES)
def test_single_path_combinations_equal_their_path(family):
    """``attention`` equals the mixed module with rates (1, 0), ``conv`` with rates (0, 1), in float64."""
    full, args = FAMILIES[family](combination="learned")
    randomize_(full, seed=3)
    for mode, rates in (("attention", (1.0, 0.0)), ("conv", (0.0, 1.0))):
        single, _ = FAMILIES[family](combination=mode)
        missing, unexpected = single.load_state_dict(full.state_dict(), strict=False)
        assert not missing, (mode, missing)
        assert set(unexpected) >= RATES and (set(unexpected) >= CONV) == (mode == "attention")
        with torch.no_grad():
            full.rate1.fill_(rates[0])
            full.rate2.fill_(rates[1])
        torch.testing.assert_close(single(*args), full(*args), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_shift_modes_agree_at_the_shift_init(family):
    """tensor / fixed / learnable / grouped: one shift-and-sum while the kernels hold the shift init."""
    base, args = FAMILIES[family](combination="learned", shift="tensor")
    randomize_(base, seed=4)  # fc, rates and the attention side random; no kernel in this mode
    expect = base(*args)
    for shift in ("fixed", "learnable", "grouped"):
        layer, _ = FAMILIES[family](combination="learned", shift=shift)
        missing, unexpected = layer.load_state_dict(base.state_dict(), strict=False)
        assert not unexpected and len(missing) == 1, (shift, missing)  # only the kernel, at its shift init
        torch.testing.assert_close(layer(*args), expect, rtol=1e-12, atol=1e-12)


SMALL = {
    "acmix_swin_tiny": dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4)),
    "acmix_pvt_tiny": dict(embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), depths=(1, 1, 1, 1),
                           mlp_ratios=(2, 2, 2, 2)),
    "acmix_san10": dict(layers=(1, 1, 1, 1, 1), kernels=(3, 7, 7, 7, 7), widths=(32, 32, 64, 64, 128), stem_chs=16),
    "acmix_resnet_tiny": dict(in_chans=3),
}
@pytest.mark.parametrize("combination", ["learned", "attention", "conv"])
@pytest.mark.parametrize("family", FAMILIES)
def test_autocast_output_is_the_autocast_dtype(family, combination):
    """Under bf16 autocast every mixer returns bf16 in every mode: the float32 rates do not promote the sum
    (docs/operator.md, "Autocast"); the rates' gradients stay float32."""
    extra = {"acmix": True} if family in ("pvt", "san") else {}
    module, args = FAMILIES[family](combination=combination, **extra)
    module = randomize_(module.float(), seed=1)
    args = tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(*args)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    if combination == "learned":
        out.float().sum().backward()
        assert module.rate1.grad.dtype == torch.float32 and torch.isfinite(module.rate1.grad).all()


MODES = [dict(combination=c) for c in ("learned", "fixed", "attention", "conv")] + [
    dict(shift=s) for s in ("tensor", "fixed", "learnable")]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()))
@pytest.mark.parametrize("name", SMALL)
def test_every_family_builds_and_trains_in_every_mode(name, mode):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **SMALL[name], **mode)
    mixers = [m for m in model.modules() if isinstance(m, ConvPathMixer)]
    assert len(mixers) >= 2
    combination, shift = mode.get("combination", "learned"), mode.get("shift", "grouped")
    for m in mixers:
        assert (m.combination.value, m.shift.value) == (combination, shift)
        keys = set(m.state_dict())
        params = {n for n, _ in m.named_parameters()}
        assert ("fc.weight" in keys) == (combination != "attention")
        assert ("rate1" in keys) == (combination in ("learned", "fixed"))
        assert ("rate1" in params) == (combination == "learned")
        assert ("dep_conv.weight" in keys) == (combination != "attention" and shift == "grouped")
        assert ("shift_weight" in keys) == (shift in ("fixed", "learnable"))
        assert ("shift_weight" in params) == (shift == "learnable")
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bad_switches_raise_value_error():
    with pytest.raises(ValueError, match="combination='both'"):
        SRAttention(12, 3, combination="both")
    with pytest.raises(ValueError, match="shift='rolled'"):
        SAM(32, 2, 8, acmix=True, shift="rolled")
    with pytest.raises(ValueError, match="kernel_conv must be odd, got 2"):
        WindowAttentionACmix(16, 2, kernel_conv=2)
    with pytest.raises(ValueError, match="rates must be a pair"):
        SRAttention(12, 3, acmix=True, rates=(1.0,))
    with pytest.raises(ValueError, match="rates must be finite, got"):
        ACmix(8, 8, rates=(float("nan"), 0.5))
    with pytest.raises(ValueError, match="conv_bias must be a bool, got 'no'"):
        ACmix(8, 8, conv_bias="no")
    with pytest.raises(ValueError, match="given to conv_resnet26, which has no ACmix layers"):
        timm.create_model("conv_resnet26", combination="conv")
    with pytest.raises(ValueError, match="out_channels=8 is not divisible by head_dim=3"):
        SAM(32, 3, 8, share_planes=4, acmix=True)
    SAM(32, 3, 8, share_planes=4)  # no convolution path: no group constraint
    with pytest.raises(ValueError, match="at least one path"):
        _pvt(acmix=True)[0].combine(None, None)
