"""SAN / SAN-ACmix: the patchwise SAM against SAN's formulation, the ACmix conv path, checkpoints."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from acmix.models.acmix_san import PAPER_FIGURES, SAM, SAN, checkpoint_filter_fn
from acmix.ops.patchwise import patchwise_aggregation_reference
from helpers import input_gradient, randomize_

SMALL = dict(layers=(1, 1, 1, 1, 1), kernels=(3, 7, 7, 7, 7), widths=(32, 32, 64, 64, 128), stem_chs=16)


def _shift_sum(f: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, D, k*k, H, W) -> (B, D, H, W)``: sum of the k*k zero-padded shifted maps (a k x k conv as shifts)."""
    h, w = f.shape[-2:]
    fp = F.pad(f, [k // 2] * 4)
    return sum(fp[:, :, t, t // k:t // k + h, t % k:t % k + w] for t in range(k * k))


def _sam(acmix: bool, seed: int = 0) -> SAM:
    sam = SAM(32, 2, 8, share_planes=4, kernel_size=3, acmix=acmix, dtype=torch.float64).eval()
    return randomize_(sam, seed)


def test_sam_matches_san_unfold_formulation():
    """Weights from [q, nn.Unfold(ReflectionPad(k))] and SAN's aggregation, written as SAN writes them."""
    sam = _sam(acmix=False)
    x = torch.randn(2, 32, 6, 5, dtype=torch.float64)
    q, k, v = sam.conv1(x), sam.conv2(x), sam.conv3(x)
    b, _, h, w = x.shape
    x1 = q.view(b, -1, 1, h * w)
    x2 = F.unfold(F.pad(k, [1] * 4, mode="reflect"), 3).view(b, -1, 1, h * w)
    wt = sam.conv_w(torch.cat([x1, x2], 1)).view(b, -1, 9, h, w)
    expect = patchwise_aggregation_reference(v, wt, kernel_size=3)
    torch.testing.assert_close(sam(x), expect)


def test_acmix_conv_path_at_init_is_shift_and_sum():
    sam = SAM(64, 4, 16, share_planes=8, kernel_size=3, acmix=True, dtype=torch.float64)
    assert sam.rate1.item() == 0.5 and sam.rate2.item() == 0.5
    x = torch.randn(2, 64, 5, 7, dtype=torch.float64)
    q, k, v = sam.conv1(x), sam.conv2(x), sam.conv3(x)
    pieces = torch.stack([q, k, *v.chunk(4, 1)], 1)  # (B, 6, C/16, H, W): q, k, four value groups
    f = torch.einsum("tp,bpdhw->bdthw", sam.fc.weight.view(9, 6), pieces)
    expect = _shift_sum(f, 3).repeat_interleave(16 // 4, dim=1)  # out channel o reads group o // 4
    torch.testing.assert_close(sam.conv_path(q, k, v), expect)
    att = SAM.forward(sam, x) - 0.5 * sam.conv_path(q, k, v)
    base = SAM(64, 4, 16, share_planes=8, kernel_size=3, dtype=torch.float64)
    base.load_state_dict(sam.state_dict(), strict=False)
    torch.testing.assert_close(att, 0.5 * base(x))


def test_acmix_extra_parameters():
    """ACmix adds fc (6 x 9), dep_conv (C/4 x 9 x 3 x 3) and two rates per SAM, nothing else."""
    for c in (64, 256, 2048):
        base = SAM(c, c // 16, c // 4, kernel_size=7)
        mix = SAM(c, c // 16, c // 4, kernel_size=7, acmix=True)
        extra = sum(p.numel() for p in mix.parameters()) - sum(p.numel() for p in base.parameters())
        assert extra == 6 * 9 + (c // 4) * 81 + 2


def test_param_counts_and_names():
    for name, fig in PAPER_FIGURES.items():
        m = timm.create_model(name, device="meta")  # shapes only: no init cost
        n = sum(p.numel() for p in m.parameters()) / 1e6
        assert abs(n / fig["params_m"] - 1) <= fig["params_tol"], (name, n)
    m = timm.create_model("acmix_san10", device="meta")
    assert {"stages.4.blocks.0.sam.rate1", "stages.0.blocks.1.sam.rate2"} <= m.no_weight_decay()
    assert not timm.create_model("san10_patchwise", device="meta").no_weight_decay()


@pytest.mark.parametrize("acmix", [False, True])
def test_tiny_maps_and_sizes(acmix):
    """32x32 input: the last stage is 1x1 under a 7x7 window (iterated reflection)."""
    torch.manual_seed(0)
    m = SAN(**SMALL, acmix=acmix, num_classes=5)
    for size in ((32, 32), (64, 96)):
        y = m(torch.randn(2, 3, *size))
        assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.sum().backward()
    m.set_grad_checkpointing(True)
    m(torch.randn(2, 3, 32, 32)).sum().backward()  # batch 2: BatchNorm on the 1x1 map needs 2 values
    m.reset_classifier(0)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m(torch.randn(1, 3, 32, 32)).float()).all()


def test_features():
    m = SAN(**SMALL)
    assert [f["reduction"] for f in m.feature_info] == [4, 8, 16, 32]
    feats = m.forward_intermediates(torch.randn(1, 3, 64, 64), intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(1, 32, 16, 16), (1, 64, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2)]


@pytest.mark.parametrize("acmix", [False, True])
def test_odd_sizes_are_pooled_not_cropped(acmix):
    """The 2x2 pools keep a last odd row / column (ceil mode): it reaches the output."""
    torch.manual_seed(0)
    m = SAN(**SMALL, acmix=acmix, num_classes=3).eval()
    g = input_gradient(m, 33, 35)
    assert g[-1].sum() > 0 and g[:, -1].sum() > 0
    feats = m.forward_intermediates(torch.randn(1, 3, 33, 35), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(9, 9), (5, 5), (3, 3), (2, 2)]


def _to_authors(sd: dict) -> dict:
    """Our keys -> the authors' SAN keys (DataParallel ``module.`` prefix, under ``state_dict``)."""
    out = {}
    for k, v in sd.items():
        k = k.replace("stem.conv.", "conv_in.").replace("stem.bn.", "bn_in.")
        if k.startswith("stages."):
            _, i, part, rest = k.split(".", 3)
            k = {"conv": f"conv{i}", "norm": f"bn{i}", "blocks": f"layer{i}"}[part] + "." + rest
        out["module." + k] = v
    return {"epoch": 100, "state_dict": out}


def test_authors_checkpoint_loads():
    torch.manual_seed(0)
    src = SAN(**SMALL, num_classes=10).eval()
    ckpt = _to_authors(src.state_dict())
    assert "module.layer2.0.sam.conv_w.0.running_mean" in ckpt["state_dict"]
    assert "module.conv_in.weight" in ckpt["state_dict"] and "module.fc.bias" in ckpt["state_dict"]
    dst = SAN(**SMALL, num_classes=10).eval()
    dst.load_state_dict(checkpoint_filter_fn(ckpt, dst), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(dst(x), src(x))


def test_filter_unwraps_like_every_family():
    """The one unwrapper: EMA weights first, torch.compile's ``_orig_mod.`` and ``module.`` removed,
    non-tensor entries dropped."""
    dst = SAN(**SMALL, num_classes=10)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in dst.state_dict().items()}
    plain = checkpoint_filter_fn(_to_authors(sd), dst)
    compiled = {k.replace("module.", "module._orig_mod."): v for k, v in _to_authors(sd)["state_dict"].items()}
    decoy = {k: torch.zeros_like(v) for k, v in compiled.items()}
    for ckpt in ({"state_dict": compiled, "epoch": 3}, {"state_dict_ema": compiled, "state_dict": decoy}):
        got = checkpoint_filter_fn(ckpt, dst)
        assert got.keys() == plain.keys() == sd.keys()
        assert all(torch.equal(got[k], plain[k]) for k in plain)


def test_errors():
    with pytest.raises(ValueError, match="5 entries"):
        SAN(layers=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="share_planes"):
        SAM(64, 4, 16, share_planes=3)
    with pytest.raises(ValueError, match="odd"):
        SAM(64, 4, 16, kernel_size=4)


def test_model_fast_aggregation_equals_reference(monkeypatch):
    """The whole network in float64 with the pixel-by-pixel reference swapped in for the fast op."""
    import acmix.models.acmix_san as san_mod

    torch.manual_seed(0)
    m = SAN(**SMALL, acmix=True, num_classes=4, dtype=torch.float64).eval()
    x = torch.randn(1, 3, 32, 64, dtype=torch.float64)
    fast = m(x)
    monkeypatch.setattr(san_mod, "patchwise_aggregation", patchwise_aggregation_reference)
    torch.testing.assert_close(m(x), fast, rtol=1e-10, atol=1e-10)
