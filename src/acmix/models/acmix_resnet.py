"""ResNet-ACmix and its baselines, as timm models.

Paper: "On the Integration of Self-Attention and Convolution", Xuran Pan, Chunjiang Ge,
Rui Lu, Shiji Song, Guanfu Chen, Zeyi Huang, Gao Huang, CVPR 2022 (arXiv:2111.14556).

The network is the torchvision-style ResNet of the authors' code: a 7x7/2 stem conv,
BN, ReLU and a 3x3/2 max-pool, then bottleneck blocks (expansion 4, widths 64, 128,
256, 512; the stride on the middle layer; a 1x1 conv + BN projection shortcut where
the shape changes), depths [1, 2, 4, 1] (26), [2, 3, 5, 2] (38), [3, 4, 6, 3] (50).
It is built as a timm :class:`~timm.models.byobnet.ByobNet`:

* ``acmix_resnetNN``: the middle layer of every bottleneck is
  ``ACmix(width, width, kernel_att=7, heads=4, kernel_conv=3, stride)``;
* ``sasa_resnetNN``: the same with attention only and 8 heads (stand-alone
  self-attention, the same layer with ``combination="attention"``);
* ``conv_resnetNN``: the plain 3x3 convolution.

The generic conv init of the network runs first and the ACmix layers'
``reset_parameters`` (shift init of the convolution path, rates 0.5) after it.
Residual BNs are not zero-initialised by default, as in the authors' code
(``zero_init_last=True`` switches that on).

A state dict in the authors' layout (torchvision ResNet names, ``layerX.Y.conv2``
being the ACmix layer) loads through :func:`checkpoint_filter_fn`:
``timm.create_model('acmix_resnet50', pretrained=True,
pretrained_cfg_overlay=dict(file=PATH))``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, cast

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg

from ..checkpoint_io import unwrap_state_dict
from ..nn import ACmix
from ._builder import no_weight_decay_names
from ._checks import POOLS, check_model_kwargs, classifier_args, with_input_check

__all__ = ["PAPER_FIGURES", "ACmixResNet", "acmix_self_attn", "checkpoint_filter_fn"]


# ----------------------------------------------------------------------------- blocks

def acmix_self_attn(dim: int, dim_out: int | None = None, *, stride: int = 1, feat_size: Any = None,
                    **kwargs: Any) -> ACmix:
    """ByobNet's ``self_attn`` slot: ``(dim, stride=..., feat_size=..., device, dtype)`` -> ACmix.

    ``feat_size`` is accepted and unused (ACmix runs at any size); every other
    keyword goes to :class:`acmix.ACmix`.
    """
    return ACmix(dim, dim if dim_out is None else dim_out, stride=stride, **kwargs)


# ----------------------------------------------------------------------------- model

class ACmixResNet(ByobNet):
    """timm's ByobNet with ``no_weight_decay`` naming the ACmix rates."""

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, reset_other: bool = False) -> None:
        num_classes, pool = classifier_args(self, num_classes, global_pool, POOLS)
        if reset_other:  # timm releases before it lack the argument: pass it only when asked
            super().reset_classifier(num_classes, pool, reset_other=True)
        else:
            super().reset_classifier(num_classes, pool)


_DEPTHS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}
_WIDTHS = (256, 512, 1024, 2048)  # block outputs; bottleneck width is a quarter


def _resnet_cfg(depth: int, kind: str) -> ByoModelCfg:
    block: dict[str, Any]
    if kind == "conv":
        block = {"type": "bottle"}
    elif kind == "acmix":
        block = {"type": "self_attn", "self_attn_layer": acmix_self_attn,
                 "self_attn_kwargs": {"kernel_att": 7, "heads": 4, "kernel_conv": 3}}
    elif kind == "sasa":
        block = {"type": "self_attn", "self_attn_layer": acmix_self_attn,
                 "self_attn_kwargs": {"kernel_att": 7, "heads": 8, "combination": "attention"}}
    else:
        raise ValueError(f"kind={kind!r} is not one of 'conv', 'acmix', 'sasa'")
    blocks = tuple(
        ByoBlockCfg(d=d, c=c, s=1 if i == 0 else 2, gs=0, br=0.25, **block)
        for i, (d, c) in enumerate(zip(_DEPTHS[depth], _WIDTHS))
    )
    return ByoModelCfg(blocks=blocks, stem_type="7x7", stem_pool="maxpool", stem_chs=64,
                       downsample="conv1x1", num_features=0)


model_cfgs = {
    f"{kind}_resnet{depth}": _resnet_cfg(depth, kind)
    for kind in ("acmix", "sasa", "conv") for depth in _DEPTHS
}


# ----------------------------------------------------------------------------- checkpoint filter

_TV_BLOCK = {
    "conv1": "conv1_1x1.conv", "bn1": "conv1_1x1.bn",
    "conv3": "conv3_1x1.conv", "bn3": "conv3_1x1.bn",
    "downsample.0": "shortcut.conv", "downsample.1": "shortcut.bn",
}
_TV_KEY = re.compile(r"^layer(\d+)\.(\d+)\.(conv1|bn1|conv2|bn2|conv3|bn3|downsample\.[01])\.(.+)$")


def _map_torchvision_key(key: str, attn: bool) -> str:
    if key.startswith("conv1."):
        return "stem.conv1.conv." + key[len("conv1."):]
    if key.startswith("bn1."):
        return "stem.conv1.bn." + key[len("bn1."):]
    if key.startswith("fc."):
        return "head.fc." + key[len("fc."):]
    m = _TV_KEY.match(key)
    if m is None:
        return key
    layer, block, name, rest = m.groups()
    if name == "conv2":
        new = "self_attn" if attn else "conv2_kxk.conv"
    elif name == "bn2":
        new = "post_attn" if attn else "conv2_kxk.bn"
    else:
        new = _TV_BLOCK[name]
    return f"stages.{int(layer) - 1}.{block}.{new}.{rest}"


def checkpoint_filter_fn(state_dict: dict[str, Any], model: ACmixResNet) -> dict[str, torch.Tensor]:
    """Map a state dict in the authors' (torchvision) ResNet layout onto this ByobNet.

    ``conv1``/``bn1`` -> ``stem.conv1``; ``layerX.Y.{conv1,bn1,conv3,bn3}`` ->
    ``stages.X-1.Y.{conv1_1x1,conv3_1x1}``; ``layerX.Y.conv2`` (ACmix, keys
    ``conv1..3``, ``conv_p``, ``fc``, ``dep_conv``, ``rate1``, ``rate2``) ->
    ``self_attn`` and ``bn2`` -> ``post_attn`` (``conv2_kxk`` in the conv
    baseline); ``downsample.0/1`` -> ``shortcut.conv/bn``; ``fc`` -> ``head.fc``.
    A state dict already in this model's layout passes through.
    """
    state_dict = unwrap_state_dict(state_dict)
    if "conv1.weight" not in state_dict:
        return state_dict
    attn = any(".self_attn." in k for k in model.state_dict())
    return {_map_torchvision_key(k, attn): v for k, v in state_dict.items()}


# ----------------------------------------------------------------------------- builder

def _create_resnet(variant: str, pretrained: bool = False, acmix_kwargs: dict[str, Any] | None = None,
                   **kwargs: Any) -> ACmixResNet:
    """``acmix_kwargs`` go to every ACmix layer (e.g. ``backend``, ``shift``, ``combination``).

    ``combination`` and ``shift`` are also taken directly, as every family takes them.
    """
    check_model_kwargs(variant, kwargs, num_features=5, pools=POOLS)  # the stem and four stages
    cfg = model_cfgs[variant]
    switches: dict[str, Any] = {k: kwargs.pop(k) for k in ("combination", "shift") if k in kwargs}
    if switches:
        acmix_kwargs = {**(acmix_kwargs or {}), **switches}
    if acmix_kwargs:
        blocks = cast("tuple[ByoBlockCfg, ...]", cfg.blocks)  # flat in this family (timm also allows nesting)
        if blocks[0].type != "self_attn":
            raise ValueError(f"acmix_kwargs={acmix_kwargs!r} given to {variant}, which has no ACmix layers")
        cfg = replace(cfg, blocks=tuple(
            replace(b, self_attn_kwargs={**(b.self_attn_kwargs or {}), **acmix_kwargs}) for b in blocks))
    kwargs.setdefault("zero_init_last", False)
    return with_input_check(build_model_with_cfg(
        ACmixResNet, variant, pretrained,
        model_cfg=cfg,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    ), variant)


# ----------------------------------------------------------------------------- default cfgs

def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.conv1.conv", "classifier": "head.fc",
        "paper_ids": "arXiv:2111.14556", **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in model_cfgs})

# Published figures (docs/models.md; conv/SASA baselines: Ramachandran et al. 2019, Tab. 1).
# MACs are multiply-accumulates at 224x224, the README's "FLOPs".
PAPER_FIGURES: dict[str, dict] = {
    "acmix_resnet26": dict(params_m=10.49, params_tol=0.02, macs_g=2.3, top1=76.1),
    "acmix_resnet38": dict(params_m=14.41, params_tol=0.02, macs_g=2.9, top1=77.4),
    "acmix_resnet50": dict(params_m=18.33, params_tol=0.02, macs_g=3.6, top1=77.8),
    "sasa_resnet26": dict(params_m=10.3, params_tol=0.02, macs_g=None, top1=None),
    "sasa_resnet38": dict(params_m=14.1, params_tol=0.02, macs_g=None, top1=None),
    "sasa_resnet50": dict(params_m=18.0, params_tol=0.02, macs_g=None, top1=None),
    "conv_resnet26": dict(params_m=13.7, params_tol=0.02, macs_g=None, top1=73.6),
    "conv_resnet38": dict(params_m=19.6, params_tol=0.02, macs_g=None, top1=76.0),
    "conv_resnet50": dict(params_m=25.6, params_tol=0.02, macs_g=4.1, top1=76.9),
}


# ----------------------------------------------------------------------------- entry points

@register_model
def acmix_resnet26(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """ResNet-ACmix-26: depths [1, 2, 4, 1], every 3x3 an ACmix layer."""
    return _create_resnet("acmix_resnet26", pretrained, **kwargs)


@register_model
def acmix_resnet38(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """ResNet-ACmix-38: depths [2, 3, 5, 2]."""
    return _create_resnet("acmix_resnet38", pretrained, **kwargs)


@register_model
def acmix_resnet50(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """ResNet-ACmix-50: depths [3, 4, 6, 3]."""
    return _create_resnet("acmix_resnet50", pretrained, **kwargs)


@register_model
def sasa_resnet26(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """SASA ResNet-26: local 7x7 self-attention (8 heads) in place of every 3x3."""
    return _create_resnet("sasa_resnet26", pretrained, **kwargs)


@register_model
def sasa_resnet38(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """SASA ResNet-38."""
    return _create_resnet("sasa_resnet38", pretrained, **kwargs)


@register_model
def sasa_resnet50(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """SASA ResNet-50."""
    return _create_resnet("sasa_resnet50", pretrained, **kwargs)


@register_model
def conv_resnet26(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """Convolutional ResNet-26 baseline (3x3 convs, same net)."""
    return _create_resnet("conv_resnet26", pretrained, **kwargs)


@register_model
def conv_resnet38(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """Convolutional ResNet-38 baseline."""
    return _create_resnet("conv_resnet38", pretrained, **kwargs)


@register_model
def conv_resnet50(pretrained: bool = False, **kwargs: Any) -> ACmixResNet:
    """Convolutional ResNet-50 baseline (torchvision's ResNet-50)."""
    return _create_resnet("conv_resnet50", pretrained, **kwargs)
