"""Swin-ACmix and Conv-Swin: the authors' forward order, timm's Swin as an oracle, checkpoint loading."""

from __future__ import annotations

import copy
import pickle
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import acmix  # noqa: F401
from acmix.checkpoint_io import ConfigStub, load_checkpoint_file
from acmix.models import acmix_swin
from acmix.models.acmix_swin import SwinACmix, SwinACmixBlock
from acmix.ops import shift_kernel
from helpers import randomize_

SMALL = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), num_classes=10)
# checkpoints carry a 1000-class head (the pretrained cfg's), so timm loads it
SMALL_1K = {**SMALL, "num_classes": 1000}


# ----------------------------------------------------------------------------- the authors' block, restated

def _region_ids(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    ids = torch.zeros(h, w)
    if shift:
        cnt = 0
        for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                ids[hs, wsl] = cnt
                cnt += 1
    return ids


def _authors_block(blk: SwinACmixBlock, x: torch.Tensor) -> torch.Tensor:
    """The authors' Swin-ACmix block written out: qkv on the whole rolled map, conv path through
    their reshapes, window attention one window at a time, ``rate1 * att + rate2 * conv``."""
    x = x + _authors_attention_step(blk, blk.norm1(x))
    return x + blk.mlp(blk.norm2(x))


def _authors_attention_step(blk: SwinACmixBlock, y: torch.Tensor, roll: bool = True) -> torch.Tensor:
    """Roll, the authors' ACmix attention on the whole map (a multiple of the window), roll back
    (``roll=False``: ``y`` is rolled already and stays so; the shifted-window mask is applied either way)."""
    attn, ws, shift = blk.attn, blk.window_size[0], blk.shift_size[0]  # timm's block keeps (h, w) pairs
    b, h, w, c = y.shape
    heads = attn.num_heads
    hd, n = c // heads, ws * ws
    x = y
    if shift and roll:
        y = torch.roll(y, (-shift, -shift), (1, 2))
    qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias)
    f_all = qkv.reshape(b, h * w, 3 * heads, hd).permute(0, 2, 1, 3)
    f_conv = F.conv2d(f_all, attn.fc.weight, attn.fc.bias).permute(0, 3, 1, 2).reshape(b, 9 * hd, h, w)
    out_conv = F.conv2d(f_conv, attn.dep_conv.weight, None, padding=1, groups=hd).permute(0, 2, 3, 1)

    coords = [(i, j) for i in range(ws) for j in range(ws)]
    bias = torch.empty(heads, n, n, dtype=x.dtype)
    for p, (i1, j1) in enumerate(coords):
        for q, (i2, j2) in enumerate(coords):
            bias[:, p, q] = attn.relative_position_bias_table[(i1 - i2 + ws - 1) * (2 * ws - 1) + (j1 - j2 + ws - 1)]
    regions = _region_ids(h, w, ws, shift)
    att = torch.zeros_like(out_conv)
    for wi in range(h // ws):
        for wj in range(w // ws):
            rows, cols = slice(wi * ws, (wi + 1) * ws), slice(wj * ws, (wj + 1) * ws)
            t = qkv[:, rows, cols].reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
            logits = (t[0] * hd**-0.5) @ t[1].transpose(-2, -1) + bias
            r = regions[rows, cols].flatten()
            logits = logits + torch.where(r[:, None] != r[None, :], -100.0, 0.0).to(x.dtype)
            o = (logits.softmax(-1) @ t[2]).transpose(1, 2).reshape(b, n, c)
            att[:, rows, cols] = F.linear(o, attn.proj.weight, attn.proj.bias).reshape(b, ws, ws, c)
    y = attn.rate1 * att + attn.rate2 * out_conv
    if shift and roll:
        y = torch.roll(y, (shift, shift), (1, 2))
    return y


@pytest.mark.parametrize("shift", [0, 3])
def test_block_follows_the_authors_forward_order(shift):
    blk = SwinACmixBlock(16, 2, window_size=7, shift_size=shift, dtype=torch.float64)
    randomize_(blk, seed=shift)
    x = torch.randn(2, 14, 21, 16, dtype=torch.float64)
    torch.testing.assert_close(blk(x), _authors_block(blk, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size", [(10, 17), (15, 9)])
def test_maps_off_the_window_grid_are_padded_then_rolled(size):
    """Off the window grid the block zero-pads after ``norm1`` and then rolls: its attention step is
    the authors' step on the padded map, cropped.  timm's order (roll, then pad) differs there, and
    the two orders agree on the grid (every stage at 224x224)."""
    blk = randomize_(SwinACmixBlock(16, 2, window_size=7, shift_size=3, dtype=torch.float64), seed=5)

    def both_orders(y):
        h, w = y.shape[1:3]
        pad = (0, 0, 0, (-w) % 7, 0, (-h) % 7)
        pad_then_roll = _authors_attention_step(blk, F.pad(y, pad))[:, :h, :w]
        rolled = F.pad(torch.roll(y, (-3, -3), (1, 2)), pad)
        roll_then_pad = torch.roll(_authors_attention_step(blk, rolled, roll=False)[:, :h, :w], (3, 3), (1, 2))
        return pad_then_roll, roll_then_pad

    y = torch.randn(2, *size, 16, dtype=torch.float64)
    pad_then_roll, roll_then_pad = both_orders(y)
    torch.testing.assert_close(blk._attn(y), pad_then_roll, rtol=1e-10, atol=1e-10)
    assert (pad_then_roll - roll_then_pad).abs().max() > 1e-3
    on_grid = torch.randn(1, 14, 21, 16, dtype=torch.float64)
    a, b = both_orders(on_grid)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(blk._attn(on_grid), a, rtol=1e-10, atol=1e-10)


def test_attention_only_swin_equals_timm_swin(tmp_path):
    """With the ACmix extras off, the model is Swin: timm's swin_tiny weights give timm's outputs."""
    ref = randomize_(timm.create_model("swin_tiny_patch4_window7_224", **SMALL_1K), seed=1).eval()
    with torch.no_grad():
        for m in ref.modules():  # moderate weights keep 12 random blocks numerically tame
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(0.2)
    path = tmp_path / "swin_tiny_timm.pth"
    torch.save(ref.state_dict(), path)
    model = _load(path, combination="attention")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- checkpoints in the authors' layout

@pytest.fixture(scope="module")
def source():
    """A randomised Swin-ACmix (Swin-T layout, small widths) and its state dict with the authors' buffers."""
    torch.manual_seed(0)
    model = randomize_(timm.create_model("acmix_swin_tiny", **SMALL_1K), seed=2).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(0.2)
    sd = _authors_layout(model.state_dict())
    for i, res in enumerate((56, 28, 14, 7)):
        for j in range(len(model.layers[i].blocks)):
            sd[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
            if j % 2 and res > 7:
                sd[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros((res // 7) ** 2, 49, 49)
    assert "layers.0.downsample.reduction.weight" in sd and "head.weight" in sd
    assert "layers.0.blocks.1.attn.fc.bias" in sd and "layers.0.blocks.1.attn.dep_conv.bias" not in sd
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
    return model, sd, x, out


def _authors_layout(state_dict) -> dict:
    """timm's Swin keys in the authors' layout: ``layers.i.downsample`` -> ``layers.{i-1}.downsample``
    (merging at the end of the previous stage), ``head.fc.`` -> ``head.``."""
    out = {}
    for k, v in state_dict.items():
        parts = k.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        out[".".join(parts).replace("head.fc.", "head.")] = v
    return out


def _fake_yacs_class() -> type:
    cls = type("CfgNode", (dict,), {"__module__": "yacs.config"})
    return cls


def _save_training_dict(path, state_dict) -> None:
    """Save like the authors' Swin training script: model, optimizer, scheduler, a pickled yacs config."""
    cls = _fake_yacs_class()
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    yacs_config.CfgNode, yacs.config = cls, yacs_config
    config = cls(MODEL=cls(TYPE="swin_acmix", DROP_PATH_RATE=0.2), TRAIN=cls(EPOCHS=300))
    config.__dict__["__immutable__"] = True
    old = {k: sys.modules.get(k) for k in ("yacs", "yacs.config")}
    sys.modules.update({"yacs": yacs, "yacs.config": yacs_config})
    try:
        torch.save({"model": state_dict, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
                    "lr_scheduler": {"last_epoch": 299}, "max_accuracy": 81.9, "epoch": 299,
                    "config": config}, path)
    finally:
        for k, v in old.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _load(path, name="acmix_swin_tiny", **kwargs):
    """``timm.create_model`` with a checkpoint file; the small widths of SMALL keep the test cheap."""
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                             **{**SMALL_1K, **kwargs}).eval()


def test_bare_state_dict_loads_exactly(source, tmp_path):
    _, sd, x, out = source
    path = tmp_path / "swin_acmix_tiny.pth"
    torch.save(sd, path)
    with torch.no_grad():
        assert torch.equal(_load(path)(x), out)


def test_training_dict_with_pickled_config_loads_without_unpickling_it(source, tmp_path):
    _, sd, x, out = source
    path = tmp_path / "swin_acmix_tiny_train.pth"
    _save_training_dict(path, sd)
    assert "yacs.config" not in sys.modules
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what plain timm loading would meet
    ckpt = load_checkpoint_file(path)
    assert isinstance(ckpt["config"], ConfigStub) and ckpt["config"]["MODEL"]["TYPE"] == "swin_acmix"
    assert "yacs.config" not in sys.modules
    with torch.no_grad():
        assert torch.equal(_load(path)(x), out)

    # the one-time conversion writes a bare state dict that plain weights-only loading accepts
    dst = tmp_path / "converted.pth"
    keys = acmix_swin.convert_checkpoint(path, dst)
    bare = torch.load(dst, weights_only=True)
    assert set(bare) == set(keys) == set(sd)
    safe = tmp_path / "converted.safetensors"
    acmix_swin.convert_checkpoint(path, safe)
    with torch.no_grad():
        assert torch.equal(_load(safe)(x), out)


def test_conversion_is_atomic(tmp_path, monkeypatch):
    """A conversion that fails while writing keeps the earlier output and leaves no temporary file."""
    src, dst = tmp_path / "release.pth", tmp_path / "bare.pth"
    torch.save({"model": {"module.w": torch.ones(3)}, "epoch": 300}, src)
    assert acmix_swin.convert_checkpoint(src, dst) == ["w"]

    def dying_save(obj, f):
        Path(f).write_bytes(b"half a file")
        raise OSError("device error")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="device error"):
        acmix_swin.convert_checkpoint(src, dst)
    monkeypatch.undo()
    assert torch.equal(torch.load(dst, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.pth", "release.pth"]


def test_other_pickled_globals_are_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(1)}, "extra": Payload()}, path)
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.exec"):
        load_checkpoint_file(path)
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.exec"):
        _load(path)
    assert not marker.exists()


def test_plain_swin_weights_initialise_swin_acmix(source, tmp_path):
    """Authors' Swin layout without the ACmix extras: everything loads, the extras keep their init."""
    _, sd, _, _ = source
    plain = {k: v for k, v in sd.items() if not k.endswith(acmix_swin.ACMIX_EXTRA_SUFFIXES)}
    assert len(plain) < len(sd)
    path = tmp_path / "swin_tiny_plain.pth"
    torch.save(plain, path)
    loaded = _load(path)
    own = _authors_layout(loaded.state_dict())
    for k, v in plain.items():
        if k in own:
            assert torch.equal(own[k], v), k
    blk = loaded.layers[2].blocks[1].attn
    assert torch.equal(blk.dep_conv.weight, shift_kernel(3).expand_as(blk.dep_conv.weight))
    assert blk.rate1.item() == 0.5 and blk.rate2.item() == 0.5

    # another head size: the classifier is skipped, everything else loads
    ten = _load(path, num_classes=7)
    assert ten.head.fc.out_features == 7
    assert torch.equal(ten.layers[1].blocks[0].attn.qkv.weight, plain["layers.1.blocks.0.attn.qkv.weight"])


def test_timm_swin_layout_initialises_swin_acmix(tmp_path):
    ref = timm.create_model("swin_tiny_patch4_window7_224", **SMALL_1K)
    path = tmp_path / "swin_tiny_timm.pth"
    torch.save(ref.state_dict(), path)
    model = _load(path)
    assert set(model.state_dict()) - set(ref.state_dict()) == {
        k for k in model.state_dict() if k.endswith(acmix_swin.ACMIX_EXTRA_SUFFIXES)}
    assert torch.equal(model.layers[1].downsample.reduction.weight, ref.layers[1].downsample.reduction.weight)
    assert torch.equal(model.head.fc.weight, ref.head.fc.weight)
    assert torch.equal(model.layers[3].blocks[1].mlp.fc2.weight, ref.layers[3].blocks[1].mlp.fc2.weight)


# ----------------------------------------------------------------------------- model behaviour

def test_sizes_features_and_conv_swin():
    model = timm.create_model("acmix_swin_tiny", **SMALL).eval()
    conv = timm.create_model("conv_swin_tiny", **SMALL).eval()
    assert not any(hasattr(m, "proj") or hasattr(m, "rate1") for m in conv.modules()
                   if isinstance(m, acmix_swin.WindowAttentionACmix))
    with torch.no_grad():
        for h, w in [(32, 32), (96, 96), (64, 160)]:
            x = torch.randn(1, 3, h, w)
            assert model(x).shape == (1, 10) and conv(x).shape == (1, 10)
            assert model.forward_features(x).shape == (1, h // 32, w // 32, 256)
    feats = timm.create_model("acmix_swin_tiny", features_only=True, out_indices=(1, 3), **SMALL).eval()
    assert feats.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in feats(torch.randn(1, 3, 96, 128))]
    assert shapes == [(1, 64, 12, 16), (1, 256, 3, 4)]


def test_shift_init_no_weight_decay_and_dtype():
    model = timm.create_model("acmix_swin_tiny", dtype=torch.float64, **SMALL)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    attns = [m for m in model.modules() if isinstance(m, acmix_swin.WindowAttentionACmix)]
    assert len(attns) == 8
    for a in attns:
        assert torch.equal(a.dep_conv.weight, shift_kernel(3, dtype=torch.float64).expand_as(a.dep_conv.weight))
    nwd = model.no_weight_decay()
    assert "layers.2.blocks.1.attn.rate1" in nwd and "layers.0.blocks.0.attn.relative_position_bias_table" in nwd


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model("acmix_swin_tiny", **SMALL)
    other = copy.deepcopy(model)
    other.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    for m in (model, other):
        m.train()
        m(x).square().mean().backward()
    for (n, p), q in zip(model.named_parameters(), other.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="combination='bogus'"):
        SwinACmix(combination="bogus")
    with pytest.raises(ValueError, match="shift_size=7"):
        SwinACmixBlock(16, 2, window_size=7, shift_size=7)
    with pytest.raises(ValueError, match="dim=30"):
        SwinACmixBlock(30, 4)
    with pytest.raises(ValueError, match="global_pool='bogus'"):
        SwinACmix(global_pool="bogus")
    with pytest.raises(ValueError, match="global_pool='nope'"):
        SwinACmix(depths=(1,), num_heads=(2,), embed_dim=16).reset_classifier(3, "nope")
    with pytest.raises(ValueError, match="depths="):
        SwinACmix(depths=(2, 2), num_heads=(1, 2, 3))
    for name, value in (("head_dim", 4), ("always_partition", True), ("weight_init", "jax")):
        with pytest.raises(ValueError, match=f"{name}={value!r}"):
            SwinACmix(**{name: value})


def test_set_input_size_changes_only_the_nominal_size():
    model = SwinACmix(depths=(1, 1), num_heads=(1, 2), embed_dim=16)
    model.set_input_size(img_size=(96, 128))
    assert tuple(model.patch_embed.img_size) == (96, 128)
    with pytest.raises(ValueError, match="window_size=12"):
        model.set_input_size(window_size=12)
    with pytest.raises(ValueError, match="window_size=5"):
        model.layers[1].set_input_size((8, 8), 5)
    model.layers[1].set_input_size((8, 8), 7)  # the same window: nothing to do


@pytest.mark.slow
@pytest.mark.parametrize("name", ["acmix_swin_tiny", "acmix_swin_small", "conv_swin_tiny"])
def test_full_resolution_forward(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
