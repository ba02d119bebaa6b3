"""The timm contract for every registered model of the family (``acmix.models.PAPER_FIGURES``
and ``timm.list_models('acmix_*')``).

The default suite checks names, sizes and configs of every model and runs the
forward/backward/features checks on the smallest ACmix model of each family file;
the rest of the models run those under ``-m slow``.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys

import pytest
import timm
import torch
from timm.models import model_entrypoint

import acmix  # noqa: F401  (registers the models)
from acmix.analysis import count_macs
from acmix.models import PAPER_FIGURES

ALL = sorted(set(PAPER_FIGURES) | set(timm.list_models("acmix_*")))


def _family(name: str) -> str:
    return model_entrypoint(name).__module__


def _representatives() -> set[str]:
    """The ACmix model with the smallest published size in each family file."""
    best: dict[str, tuple[float, str]] = {}
    for name in ALL:
        if not name.startswith("acmix_"):
            continue
        size = PAPER_FIGURES.get(name, {}).get("params_m", 0.0)
        fam = _family(name)
        if fam not in best or (size, name) < best[fam]:
            best[fam] = (size, name)
    return {name for _, name in best.values()}


REPS = _representatives()


def _marked(names: list[str]) -> list:
    """``names``, those that are not a family's representative marked slow."""
    return [n if n in REPS else pytest.param(n, marks=pytest.mark.slow) for n in names]


FIGURED = sorted(PAPER_FIGURES)
WITH_MACS = [n for n in FIGURED if PAPER_FIGURES[n]["macs_g"] is not None]


def _input(model: torch.nn.Module, size: int = 32, batch: int = 2) -> torch.Tensor:
    chans, h, _ = model.pretrained_cfg["input_size"]
    size = min(size, h)
    return torch.randn(batch, chans, size, size, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- names

def test_registry_names_are_ours_and_do_not_shadow_timm():
    ours = {n for n in timm.list_models() if _family(n).startswith("acmix.")}
    assert set(PAPER_FIGURES) <= ours, sorted(set(PAPER_FIGURES) - ours)
    assert set(timm.list_models("acmix_*")) <= ours
    for name in ours:
        assert name.startswith("acmix_") or name in PAPER_FIGURES, (
            f"{name}: a registered name must start with acmix_ or be a listed baseline")
    # timm's own names, from a fresh interpreter that never imported acmix
    code = "import json, timm; print(json.dumps(timm.list_models()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    builtin = set(json.loads(out.strip().splitlines()[-1]))
    assert not ours & builtin, f"names that shadow timm's own models: {sorted(ours & builtin)}"


@pytest.mark.parametrize("name", sorted(PAPER_FIGURES))
def test_paper_figures_entries_are_complete(name):
    fig = PAPER_FIGURES[name]
    assert set(fig) == {"params_m", "params_tol", "macs_g", "top1"}, fig
    assert fig["params_m"] > 0 and 0 < fig["params_tol"] < 0.1


# ----------------------------------------------------------------------------- build, size, config

def _build_cheap(name: str, **kwargs) -> torch.nn.Module:
    """Build on the meta device (no init compute) where the model supports it, else on CPU."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, **kwargs)
    except (NotImplementedError, RuntimeError) as e:
        if "meta" not in str(e):
            raise
    return timm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", ALL)
def test_build_params_and_config(name):
    model = _build_cheap(name)
    assert type(model).__module__.startswith("acmix."), type(model)
    if name in PAPER_FIGURES:
        fig = PAPER_FIGURES[name]
        params = sum(p.numel() for p in model.parameters()) / 1e6
        assert abs(params - fig["params_m"]) <= fig["params_tol"] * fig["params_m"], (name, params, fig)
    cfg = model.pretrained_cfg
    assert cfg["url"] == ""
    assert len(cfg["input_size"]) == 3 and cfg["input_size"][1] == cfg["input_size"][2]
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]
    assert 0 < cfg["crop_pct"] <= 1
    assert cfg["num_classes"] == model.num_classes
    # no weight decay on the ACmix rates (and whatever else the model names), names must exist
    nwd = model.no_weight_decay()
    params = dict(model.named_parameters())
    unknown = {n for n in nwd if n not in params and not any(p.split(".")[-1] == n for p in params)}
    assert not unknown, unknown
    rates = {n for n in params if n.endswith(("rate1", "rate2"))}
    assert rates <= set(nwd), sorted(rates - set(nwd))[:5]
    if name.startswith("acmix_") and name in PAPER_FIGURES:
        assert rates, f"{name} has no ACmix rates"
    # classifier reset and gradient checkpointing switches
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7
    model.set_grad_checkpointing(True)
    with pytest.raises(RuntimeError, match=r"[Nn]o pretrained"):
        _build_cheap(name, pretrained=True)


@pytest.mark.parametrize("name", _marked(WITH_MACS))
def test_macs_match_paper(name):
    model = timm.create_model(name)
    macs = count_macs(model, (1, 3, 224, 224)) / 1e9
    target = PAPER_FIGURES[name]["macs_g"]
    assert abs(macs - target) <= 0.05 * target, (name, macs, target)


# ----------------------------------------------------------------------------- forward contract

@pytest.mark.parametrize("name", _marked(ALL))
def test_forward_backward_head_and_round_trip(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    x = _input(model)
    model.train()
    out = model(x)
    assert out.shape == (2, model.num_classes)
    out.float().logsumexp(1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval()
    with torch.no_grad():
        ref = model(x)
        feats = model.forward_features(x)
        assert torch.allclose(model.forward_head(feats), ref, atol=1e-5, rtol=1e-4)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape[0] == 2 and pre.shape[-1] == model.num_features
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x[:1, :, :32, :32])
        assert low.shape == (1, model.num_classes) and torch.isfinite(low.float()).all()

    # state dict round trip through a weights-only file into a perturbed copy
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for t in other.state_dict().values():
            t.add_(1) if t.dtype != torch.bool else t.logical_not_()
        assert not torch.equal(other(x), ref)
    other.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(other(x), ref)

    model.reset_classifier(5)
    with torch.no_grad():
        assert model(x).shape == (2, 5)


@pytest.mark.parametrize("name", _marked(FIGURED))
def test_features_only_reductions(name):
    model = timm.create_model(name, features_only=True).eval()
    reductions = model.feature_info.reduction()
    idx = [reductions.index(r) for r in (4, 8, 16, 32)]  # ValueError if a reduction is missing
    x = _input(model)
    with torch.no_grad():
        feats = model(x)
    assert len(feats) == len(reductions)
    for f, c, r in zip(feats, model.feature_info.channels(), reductions):
        assert f.shape == (2, c, 32 // r, 32 // r), (name, tuple(f.shape), c, r)

    picked = timm.create_model(name, features_only=True, out_indices=tuple(idx)).eval()
    assert picked.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in picked(x)]
    assert shapes == [(2, c, 32 // r, 32 // r) for c, r in
                      zip(picked.feature_info.channels(), (4, 8, 16, 32))]


@pytest.mark.parametrize("name", _marked(ALL))
def test_layer_decay_groups_every_parameter(name):
    """``create_optimizer_v2(layer_decay=...)`` goes through ``group_matcher``: every parameter lands
    in exactly one group, the scales grade with depth, and the classifier keeps the full rate."""
    from timm.optim import create_optimizer_v2

    model = _build_cheap(name)
    opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    scales = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert len(set(scales.values())) > 2, name
    head = model.get_classifier()
    assert all(scales[id(p)] == 1.0 for p in head.parameters())
    assert min(scales.values()) < 0.75**2
