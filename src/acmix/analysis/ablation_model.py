"""The small Fashion-MNIST ACmix network with the paper's ablation switches.

``acmix_resnet_tiny`` builds every ACmix layer with the default switches
(learned rates, grouped kernels).  Until it takes ``combination=`` and
``shift=`` itself, :func:`switch_paths` rebuilds a model's :class:`acmix.ACmix`
layers with other switches (same sizes, fresh initialisation), and the timm name
``acmix_resnet_tiny_ablation`` -- registered on first use, so that importing
the analyses does not change timm's registry -- trains through ``acmix.train``
like any model.
"""

from __future__ import annotations

import inspect
from typing import Any

import timm
from timm.models import register_model
from torch import nn

from ..models.acmix_tiny import ACmixTinyNet
from ..nn import ACmix

__all__ = ["WRAPPER", "ablation_model_name", "switch_paths"]

WRAPPER = "acmix_resnet_tiny_ablation"


def switch_paths(model: nn.Module, *, combination: str = "learned", shift: str = "grouped") -> nn.Module:
    """Replace every :class:`acmix.ACmix` in ``model`` by one with these switches (in place; returns ``model``)."""
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, ACmix)]
    if not targets:
        raise ValueError(f"{type(model).__name__} has no acmix.ACmix layers to switch")
    for name, old in targets:
        c = old.config
        p = old.conv1.weight
        new = ACmix(c.in_channels, c.out_channels, kernel_att=c.kernel_att, heads=c.heads, kernel_conv=c.kernel_conv,
                    stride=c.stride, dilation=c.dilation, position_encoding=c.position_encoding,
                    conv_bias=old.conv_bias is not None, combination=combination, rates=old.rates, shift=shift,
                    backend=old.backend, device=p.device, dtype=p.dtype)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    return model


def _tiny_ablation(pretrained: bool = False, combination: str = "learned", shift: str = "grouped",
                   **kwargs: Any) -> nn.Module:
    """``acmix_resnet_tiny`` with the Tab. 6 / Tab. 7 switches on every ACmix layer."""
    model = timm.create_model("acmix_resnet_tiny", pretrained=pretrained, **kwargs)
    return switch_paths(model, combination=combination, shift=shift)


def ablation_model_name() -> str:
    """``acmix_resnet_tiny`` when it accepts the switches, else the registered wrapper."""
    if {"combination", "shift"} <= set(inspect.signature(ACmixTinyNet.__init__).parameters):
        return "acmix_resnet_tiny"
    if not timm.is_model(WRAPPER):
        _tiny_ablation.__name__ = WRAPPER
        register_model(_tiny_ablation)
    return WRAPPER
