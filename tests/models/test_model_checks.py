"""The options every family takes are checked with one line before timm builds anything (``models/_checks.py``)."""

from __future__ import annotations

import pytest
import timm
import torch

import acmix  # noqa: F401  (registers the models)

CHEAP = ("acmix_resnet_tiny", "acmix_san10")  # one timm-built (features_only via FeatureListNet), one getter-built


@pytest.mark.parametrize("name", CHEAP)
@pytest.mark.parametrize("kwargs, words", [
    ({"num_classes": -1}, "num_classes must be an int >= 0, got -1"),
    ({"num_classes": 2.5}, "num_classes must be an int >= 0, got 2.5"),
    ({"in_chans": 0}, "in_chans must be an int >= 1, got 0"),
    ({"drop_path_rate": 2.0}, "drop_path_rate must be a number in [0, 1), got 2.0"),
    ({"drop_rate": -0.1}, "drop_rate must be a number in [0, 1), got -0.1"),
    ({"features_only": True, "out_indices": (7,)}, "out_indices=(7,) is out of range; valid feature levels are 0-"),
    ({"features_only": True, "out_indices": (-9,)}, "out_indices=(-9,) is out of range"),
    ({"features_only": True, "out_indices": ()}, "out_indices=() is out of range"),
    ({"features_only": True, "out_indices": (1, -1, 1)}, "out_indices=(1, -1, 1) names a feature level twice"),
])
def test_bad_options_get_one_line(name, kwargs, words):
    with pytest.raises(ValueError, match="^" + name) as e:
        timm.create_model(name, **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name", CHEAP)
def test_valid_edges_are_accepted(name):
    m = timm.create_model(name, num_classes=0, drop_path_rate=0.5, in_chans=2).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 2, 32, 32))
    assert y.shape == (2, m.num_features)
    n = len(timm.create_model(name, features_only=True).feature_info.channels())
    last = timm.create_model(name, features_only=True, out_indices=(-1,))
    first = timm.create_model(name, features_only=True, out_indices=(n - 1,))
    assert last.feature_info.channels() == first.feature_info.channels()


@pytest.mark.parametrize("name", CHEAP)
@pytest.mark.parametrize("features_only", [False, True])
def test_wrong_channel_count_names_both(name, features_only):
    m = timm.create_model(name, features_only=features_only, in_chans=3).eval()
    with pytest.raises(ValueError, match=rf"^{name} takes 3-channel images \(in_chans=3\), got an input of shape "
                                         r"\(1, 1, 32, 32\)$"):
        m(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("name", CHEAP)
def test_int_out_indices_take_the_last_n_levels(name):
    """timm reads an int ``out_indices`` as "the last n levels": all n are valid, 0 is not."""
    n = len(timm.create_model(name, features_only=True).feature_info.channels())
    every = timm.create_model(name, features_only=True, out_indices=n)
    assert every.feature_info.channels() == timm.create_model(name, features_only=True).feature_info.channels()
    assert timm.create_model(name, features_only=True, out_indices=1).feature_info.channels() == \
        timm.create_model(name, features_only=True, out_indices=(-1,)).feature_info.channels()
    for bad in (0, n + 1):
        with pytest.raises(ValueError, match=rf"^{name}: out_indices={bad} \(the last n levels\) must be 1-{n}$"):
            timm.create_model(name, features_only=True, out_indices=bad)


@pytest.mark.parametrize("name", (*CHEAP, "acmix_resnet26"))
def test_reset_classifier_and_global_pool_checked(name):
    m = timm.create_model(name)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match=rf"num_classes must be an int >= 0, got {bad!r}$"):
            m.reset_classifier(bad)
    with pytest.raises(ValueError, match=r"global_pool='nope' is not one of "):
        m.reset_classifier(5, "nope")
    with pytest.raises(ValueError, match=r"global_pool='nope' is not one of "):
        timm.create_model(name, global_pool="nope")
    m.reset_classifier(3)
    chans = m.pretrained_cfg["input_size"][0]
    with torch.no_grad():
        assert m.eval()(torch.randn(1, chans, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("name", CHEAP)
def test_input_rank_and_dtype_get_one_line(name):
    m = timm.create_model(name, in_chans=3).eval()
    with pytest.raises(ValueError, match=rf"^{name} takes a batch of images \(B, C, H, W\), got .* \(3, 32, 32\)$"):
        m(torch.zeros(3, 32, 32))
    for dtype in (torch.float64, torch.uint8):
        with pytest.raises(ValueError, match=rf"^{name} has torch.float32 weights but the images are {dtype}"):
            m(torch.zeros(1, 3, 32, 32, dtype=dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():  # autocast casts the images itself
        assert m(torch.zeros(1, 3, 32, 32, dtype=torch.bfloat16)).shape == (1, m.num_classes)


@pytest.mark.parametrize("name", ("acmix_san10", "acmix_pvt_tiny", "acmix_swin_tiny"))
def test_empty_batch_runs(name):
    """An empty batch gives an empty output, as for nn.Conv2d (was: reshape(b, -1, ...) with b = 0)."""
    m = timm.create_model(name).eval()
    with torch.no_grad():
        assert m(torch.zeros(0, 3, 64, 64)).shape == (0, 1000)


def test_tiny_forward_intermediates_equal_features_only():
    """timm's forward_intermediates (was missing on acmix_resnet_tiny): the features_only maps and the
    forward_features output, for every selection."""
    m = timm.create_model("acmix_resnet_tiny").eval()
    f = timm.create_model("acmix_resnet_tiny", features_only=True).eval()
    f.load_state_dict(m.state_dict(), strict=False)
    x = torch.randn(2, 1, 17, 12)
    with torch.no_grad():
        final, maps = m.forward_intermediates(x)
        assert torch.equal(final, m.forward_features(x))
        assert all(torch.equal(a, b) for a, b in zip(maps, f(x), strict=True))
        assert [t.shape[1] for t in m.forward_intermediates(x, indices=1, intermediates_only=True)] == [64]
        assert torch.equal(m.forward_intermediates(x, indices=[0], stop_early=True)[0], maps[0])
    with pytest.raises(ValueError, match="output_fmt='NHWC'"):
        m.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name, kwargs", [
    ("acmix_san10", {}),
    ("acmix_resnet26", {}),
    ("acmix_swin_tiny", {"embed_dim": 16, "depths": (1, 1), "num_heads": (2, 2), "window_size": 2}),
])
def test_timm_fast_pools_accepted(name, kwargs):
    """timm's pooling takes the "fast" forms (its own ResNet and Swin build with them): the same logits as
    the plain forms, at creation and in ``reset_classifier``."""
    def build(pool):
        torch.manual_seed(0)
        return timm.create_model(name, num_classes=3, global_pool=pool, **kwargs).eval()

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for fast, plain in (("fast", "avg"), ("fastavg", "avg"), ("fastmax", "max")):
            torch.testing.assert_close(build(fast)(x), build(plain)(x))
        m = build("avg")
        m.reset_classifier(4, "fastcatavgmax")
        assert m(x).shape == (2, 4)
