"""PVT v1 / PVT-ACmix: attention against the SRA reference, the ACmix conv path, position embeddings, checkpoints."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import torch.nn.functional as F

from acmix.models.acmix_pvt import PAPER_FIGURES, PyramidVisionTransformerV1, SRAttention, checkpoint_filter_fn
from acmix.ops.spatial_reduction import spatial_reduction_attention_reference
from helpers import input_gradient, randomize_

SMALL = dict(embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2))


def _shift_sum(f: torch.Tensor, k: int) -> torch.Tensor:
    """``(B, D, k*k, H, W) -> (B, D, H, W)``: sum of the k*k zero-padded shifted maps."""
    h, w = f.shape[-2:]
    fp = F.pad(f, [k // 2] * 4)
    return sum(fp[:, :, t, t // k:t // k + h, t % k:t % k + w] for t in range(k * k))


def _attn(acmix: bool, sr: int = 2, dim: int = 12, heads: int = 3) -> SRAttention:
    return SRAttention(dim, heads, sr_ratio=sr, acmix=acmix, dtype=torch.float64).eval()


@pytest.mark.parametrize("sr", [1, 2])
def test_attention_matches_reference(sr):
    a = randomize_(_attn(False, sr))
    x = torch.randn(2, 6 * 4, 12, dtype=torch.float64)
    w = a.weights()._replace(proj_weight=a.proj.weight, proj_bias=a.proj.bias)
    # eps 1e-5: PVT v1 keeps LayerNorm's default in the spatial-reduction norm (its blocks use 1e-6)
    expect = spatial_reduction_attention_reference(x, (6, 4), w, heads=3, sr_ratio=sr, eps=1e-5)
    torch.testing.assert_close(a(x, (6, 4)), expect)


@pytest.mark.parametrize("sr", [1, 2])
def test_acmix_conv_path_at_init_is_shift_and_sum(sr):
    a = _attn(True, sr)
    assert a.rate1.item() == 0.5 and a.rate2.item() == 0.5
    h, w, heads, hd = 6, 4, 3, 4
    x = torch.randn(2, h * w, 12, dtype=torch.float64)
    q = a.q(x)
    xr = x
    if sr > 1:
        xr = a.sr(x.transpose(1, 2).reshape(2, 12, h, w)).flatten(2).transpose(1, 2)
        xr = a.norm(xr)
    k, v = a.kv(xr).chunk(2, -1)

    def spatial(t, hh, ww):  # tokens (B, hh*ww, C) -> (B, heads, hd, H, W), nearest upsampling by repetition
        t = t.transpose(1, 2).reshape(2, heads, hd, hh, ww)
        return t.repeat_interleave(h // hh, -2).repeat_interleave(w // ww, -1)

    pieces = torch.cat([spatial(q, h, w), spatial(k, h // sr, w // sr), spatial(v, h // sr, w // sr)], 1)
    f = torch.einsum("tp,bpdhw->bdthw", a.fc.weight.view(9, 3 * heads), pieces)
    expect = _shift_sum(f, 3).repeat_interleave(12 // hd, dim=1).flatten(2).transpose(1, 2)
    qh, kh, vh = (t.reshape(2, -1, heads, hd).transpose(1, 2) for t in (q, k, v))
    torch.testing.assert_close(a.conv_path(qh, kh, vh, (h, w)), expect)
    # and the layer combines after proj: rate1 * proj(att) + rate2 * conv
    base = _attn(False, sr)
    base.load_state_dict(a.state_dict(), strict=False)
    torch.testing.assert_close(a(x, (h, w)), 0.5 * base(x, (h, w)) + 0.5 * expect)


def test_class_token_gets_no_conv_term():
    a = randomize_(_attn(True, sr=1))
    with torch.no_grad():
        a.rate1.zero_()
    x = torch.randn(2, 1 + 3 * 5, 12, dtype=torch.float64)
    out = a(x, (3, 5))
    assert torch.all(out[:, 0] == 0) and out[:, 1:].abs().sum() > 0


def test_rates_1_0_equal_baseline():
    torch.manual_seed(0)
    mix = PyramidVisionTransformerV1(**SMALL, acmix=True, num_classes=4).eval()
    base = PyramidVisionTransformerV1(**SMALL, num_classes=4).eval()
    missing, unexpected = base.load_state_dict(mix.state_dict(), strict=False)
    assert not missing and all(k.split(".")[-2:][0] in ("fc", "dep_conv", "attn") for k in unexpected)
    with torch.no_grad():
        for m in mix.modules():
            if isinstance(m, SRAttention):
                m.rate1.fill_(1.0)
                m.rate2.zero_()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(mix(x), base(x))


def test_param_counts_and_no_weight_decay():
    for name, fig in PAPER_FIGURES.items():
        m = timm.create_model(name, device="meta")  # shapes only: no init cost
        n = sum(p.numel() for p in m.parameters()) / 1e6
        assert abs(n / fig["params_m"] - 1) <= fig["params_tol"], (name, n)
    nwd = timm.create_model("acmix_pvt_tiny", device="meta").no_weight_decay()
    assert {"cls_token", "stages.0.pos_embed", "stages.3.pos_embed", "stages.1.blocks.0.attn.rate1"} <= nwd


def test_sizes_features_and_pos_embed_resize():
    torch.manual_seed(0)
    m = PyramidVisionTransformerV1(**SMALL, acmix=True, num_classes=3)
    for size in ((32, 32), (64, 96), (224, 224)):
        y = m(torch.randn(1, 3, *size))
        assert y.shape == (1, 3) and torch.isfinite(y).all()
    st = m.stages[3]
    assert torch.equal(st.position_embedding(st.grid), st.pos_embed)
    # a traced graph resizes at every size (acmix_pvt.position_embedding): at the grid size that is the identity
    for stage in m.stages:
        img = torch.randn(1, stage.pos_embed.shape[-1], *stage.grid)
        assert torch.equal(F.interpolate(img, size=stage.grid, mode="bilinear"), img)
    assert st.position_embedding((2, 3)).shape == (1, 1 + 6, 64)
    assert [f["reduction"] for f in m.feature_info] == [4, 8, 16, 32]
    feats = m.forward_intermediates(torch.randn(1, 3, 64, 96), intermediates_only=True)
    assert [tuple(f.shape) for f in feats] == [(1, 16, 16, 24), (1, 32, 8, 12), (1, 40, 4, 6), (1, 64, 2, 3)]
    m.set_grad_checkpointing(True)
    m(torch.randn(1, 3, 32, 32)).sum().backward()
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(m(torch.randn(1, 3, 64, 64)).float()).all()
    m.reset_classifier(0, "avg")
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 64)


def _to_authors(sd: dict) -> dict:
    """Our keys -> PVT v1's flat keys (``patch_embed1``, ``pos_embed1``, ``block1.0``...)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("stages."):
            _, i, part, *rest = k.split(".")
            name = {"patch_embed": "patch_embed", "pos_embed": "pos_embed", "blocks": "block"}[part]
            k = ".".join([f"{name}{int(i) + 1}", *rest])
        out[k] = v
    return {"model": out}


def test_authors_checkpoint_loads_and_resizes():
    torch.manual_seed(0)
    src = PyramidVisionTransformerV1(**SMALL, num_classes=10).eval()
    ckpt = _to_authors(src.state_dict())
    assert {"pos_embed1", "pos_embed4", "block2.0.attn.sr.weight", "patch_embed1.proj.weight",
            "cls_token", "norm.weight", "head.bias"} <= set(ckpt["model"])
    dst = PyramidVisionTransformerV1(**SMALL, num_classes=10).eval()
    dst.load_state_dict(checkpoint_filter_fn(ckpt, dst), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(dst(x), src(x))
    big = PyramidVisionTransformerV1(**SMALL, num_classes=10, img_size=256).eval()
    sd = checkpoint_filter_fn(ckpt, big)
    assert sd["stages.0.pos_embed"].shape == (1, 64 * 64, 16) and sd["stages.3.pos_embed"].shape == (1, 65, 64)
    big.load_state_dict(sd, strict=True)
    # at 224 input the resized 256 embeddings are resized back: close, not equal
    assert torch.isfinite(big(torch.randn(1, 3, 224, 224))).all()


def test_layer_norm_eps_follow_pvt_v1():
    """PVT v1's reference (``classification/pvt.py``): LayerNorm's default 1e-5 in the patch embeddings
    and the spatial reduction (``Attention.norm``), its ``norm_layer`` eps 1e-6 in the blocks and at the end."""
    m = timm.create_model("acmix_pvt_tiny", device="meta")
    eps = _to_authors({n: mod.eps for n, mod in m.named_modules() if isinstance(mod, torch.nn.LayerNorm)})["model"]
    default = {n for n in eps if re.fullmatch(r"patch_embed\d\.norm|block\d\.\d+\.attn\.norm", n)}
    assert len(default) == 4 + 6  # four patch embeddings, two blocks in each of the three reducing stages
    assert {n: e for n, e in eps.items() if n in default} == dict.fromkeys(default, 1e-5)
    assert {n: e for n, e in eps.items() if n not in default} == dict.fromkeys(set(eps) - default, 1e-6)
    assert {"block1.0.norm1", "block4.1.norm2", "norm"} <= set(eps) - default


@pytest.mark.parametrize("acmix", [False, True])
def test_odd_sizes_are_padded_not_cropped(acmix):
    """Every pixel of an odd-sized input reaches the output (zero padding to the patch grid)."""
    torch.manual_seed(0)
    m = PyramidVisionTransformerV1(**SMALL, acmix=acmix, num_classes=3).eval()
    g = input_gradient(m, 37, 35)
    assert (g[-1] > 0).all() and (g[:, -1] > 0).all()
    feats = m.forward_intermediates(torch.randn(1, 3, 37, 35), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(10, 9), (5, 5), (3, 3), (2, 2)]


def test_errors():
    with pytest.raises(ValueError, match="sr_ratio 1"):
        PyramidVisionTransformerV1(**SMALL, sr_ratios=(8, 4, 2, 2))
    with pytest.raises(ValueError, match="global_pool"):
        PyramidVisionTransformerV1(**SMALL, global_pool="max")
    with pytest.raises(ValueError, match="same length"):
        PyramidVisionTransformerV1(depths=(2, 2, 2))
    with pytest.raises(ValueError, match="not divisible"):
        SRAttention(10, 3)


def test_pretrained_file_in_authors_layout(tmp_path):
    """``pretrained=True`` with a file in PVT v1's own layout (their released ``pvt_tiny.pth`` form)."""
    torch.manual_seed(0)
    src = timm.create_model("pvt_v1_tiny").eval()
    path = tmp_path / "pvt_tiny.pth"
    torch.save(_to_authors(src.state_dict())["model"], path)
    dst = timm.create_model("pvt_v1_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))
