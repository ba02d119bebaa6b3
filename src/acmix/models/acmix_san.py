"""SAN (patchwise self-attention networks) and SAN-ACmix.

Papers:
* `Exploring Self-attention for Image Recognition` - Zhao, Jia, Koltun, CVPR 2020
  (https://arxiv.org/abs/2004.13621).  Architecture facts from github.com/hszhao/SAN.
* `On the Integration of Self-Attention and Convolution` - Pan et al., CVPR 2022
  (https://arxiv.org/abs/2111.14556), appendix C / D for SAN-ACmix.

SAN: a 1x1 stem (64 channels) at full resolution, then five stages, each a 2x2
max-pool, a 1x1 transition (64, 256, 512, 1024, 2048 channels), pre-activation
blocks ``BN-ReLU-SAM-BN-ReLU-1x1(C/4 -> C)`` + identity, and a closing
BN-ReLU.  The self-attention module (SAM, patchwise) has ``q``, ``k`` with C/16
channels (``conv1``, ``conv2``) and ``v`` with C/4 (``conv3``); the weights come
from ``BN-ReLU-1x1-BN-ReLU-1x1`` over ``[q_i, unfold(k)_i]`` (keys reflect-padded,
``nn.Unfold`` channel order), ``k*k * C/32`` of them per pixel, each shared by the
``share_planes = 8`` value channels ``c`` with the same ``c % (C/32)``
(:func:`acmix.ops.patchwise.patchwise_aggregation`).  Attention kernels
``[3, 7, 7, 7, 7]``, depths SAN10 ``[2, 1, 2, 4, 1]``, SAN15 ``[3, 2, 3, 5, 2]``,
SAN19 ``[3, 3, 4, 6, 3]``.

SAN-ACmix (no public code; paper App. C/D): ``v`` is split into ``C/4 / C/16 = 4``
groups, so ``q``, ``k`` and the four value groups are six pieces of ``C/16``
channels that feed ACmix's convolution path (:func:`acmix.ops.shift_conv`:
``fc`` 6 -> 9, group conv 3x3 ``groups=C/16`` to ``C/4``, shift init); no position
encoding; the SAM output is ``rate1 * patchwise + rate2 * conv`` with learnable
rates initialised to 0.5.

Feature maps: the stem is at stride 1 and the stages at 2, 4, 8, 16, 32; the
features (``features_only``) are stages 1-4, strides 4, 8, 16, 32.  Odd sizes are not
cropped: the 2x2 pools use ``ceil_mode`` (a last odd row / column is pooled on
its own, like the zero padding of the ResNet and Swin families), so every pixel
reaches the output.

Parameter names follow the authors' SAN after :func:`checkpoint_filter_fn`
(``conv_in``/``bn_in`` -> ``stem.conv``/``stem.bn``, ``convI``/``layerI``/``bnI``
-> ``stages.I.conv``/``.blocks``/``.norm``); inside a block they are the authors'
(``bn1``, ``sam.conv1..3``, ``sam.conv_w``, ``bn2``, ``conv``), so SAN's released
checkpoints load.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from torch import Tensor, nn

from ..checkpoint_io import unwrap_state_dict
from ..nn.parts import ConvPathMixer, FactoryKwargs, resolve_combination
from ..ops.config import Combination, ShiftMode, check_odd, check_positive
from ..ops.patchwise import patchwise_aggregation, reflect_windows
from ._builder import no_weight_decay_names
from ._checks import POOLS, check_model_kwargs, classifier_args, with_input_check

__all__ = ["PAPER_FIGURES", "SAM", "SAN", "SANBlock", "checkpoint_filter_fn"]

# Params in M (tolerance as a fraction), MACs in G at 224, ImageNet top-1 (SAN's README / the ACmix README).
# SAN's README gives 1.9 / 2.6 / 3.3 G for the baselines, counted by SAN's own counter, which also counts
# BatchNorm (2 per element), ReLU and pooling (1 per element).  ``count_macs`` counts convolutions, linears
# and the aggregation only: 1.79 / 2.48 / 3.13 G; adding SAN's elementwise terms gives 1.86 / 2.57 / 3.24 G.
# So the baselines carry ``macs_g=None`` here (the figures are not comparable with ``count_macs``).
PAPER_FIGURES: dict[str, dict] = {
    "san10_patchwise": dict(params_m=11.8, params_tol=0.03, macs_g=None, top1=77.1),
    "san15_patchwise": dict(params_m=16.2, params_tol=0.03, macs_g=None, top1=78.0),
    "san19_patchwise": dict(params_m=20.5, params_tol=0.03, macs_g=None, top1=78.2),
    "acmix_san10": dict(params_m=12.1, params_tol=0.03, macs_g=1.9, top1=77.6),
    "acmix_san15": dict(params_m=16.6, params_tol=0.03, macs_g=2.7, top1=78.4),
    "acmix_san19": dict(params_m=21.2, params_tol=0.03, macs_g=3.4, top1=78.7),
}


class SAM(ConvPathMixer):
    """Patchwise self-attention module of SAN, optionally with ACmix's convolution path.

    ``(B, in_planes, H, W) -> (B, out_planes, H, W)``.  ``rel_planes`` channels
    for q and k, ``out_planes`` for v; ``out_planes`` must be a multiple of
    ``share_planes`` and (with the convolution path) of ``rel_planes``.

    ``acmix=True`` is ``combination="learned"``: the output is ``rate1 * att +
    rate2 * conv``, where conv is :func:`acmix.ops.shift_conv` over the ``2 +
    out_planes / rel_planes`` pieces ``[q, k, v_0, v_1, ...]`` of ``rel_planes``
    channels (App. C).  ``combination`` and ``shift`` are the paper's ablation
    switches (:class:`acmix.nn.parts.ConvPathMixer`); ``"conv"`` drops ``conv_w``.
    """

    def __init__(self, in_planes: int, rel_planes: int, out_planes: int, *, share_planes: int = 8,
                 kernel_size: int = 7, acmix: bool = False, combination: Combination | str | None = None,
                 shift: ShiftMode | str = ShiftMode.GROUPED, kernel_conv: int = 3,
                 rates: tuple[float, float] = (0.5, 0.5),
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for name, value in (("in_planes", in_planes), ("rel_planes", rel_planes), ("out_planes", out_planes),
                            ("share_planes", share_planes)):
            check_positive(value, name)
        check_odd(kernel_size, "kernel_size")
        if out_planes % share_planes:
            raise ValueError(f"out_planes={out_planes} is not divisible by share_planes={share_planes}")
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.kernel_size = kernel_size
        self.rel_planes, self.out_planes, self.share_planes = rel_planes, out_planes, share_planes
        self.conv1 = nn.Conv2d(in_planes, rel_planes, 1, **dd)
        self.conv2 = nn.Conv2d(in_planes, rel_planes, 1, **dd)
        self.conv3 = nn.Conv2d(in_planes, out_planes, 1, **dd)
        self._init_conv_path(pieces=2 + out_planes // rel_planes, head_dim=rel_planes, out_channels=out_planes,
                             kernel_conv=kernel_conv, combination=resolve_combination(acmix, combination), shift=shift,
                             rates=rates, **dd)
        self.acmix = self.has_conv
        if self.has_attention:
            k2, wch = kernel_size * kernel_size, out_planes // share_planes
            self.conv_w = nn.Sequential(
                nn.BatchNorm2d(rel_planes * (k2 + 1), **dd), nn.ReLU(inplace=True),
                nn.Conv2d(rel_planes * (k2 + 1), wch, 1, bias=False, **dd),
                nn.BatchNorm2d(wch, **dd), nn.ReLU(inplace=True),
                nn.Conv2d(wch, k2 * wch, 1, **dd))
        self.reset_conv_path()

    def attention_weights(self, q: Tensor, k: Tensor) -> Tensor:
        """The patchwise weights ``(B, out_planes / share_planes, k*k, H, W)``."""
        b, _, h, w = q.shape
        k2 = self.kernel_size**2  # explicit sizes, not -1: an empty batch leaves -1 undetermined
        keys = reflect_windows(k, self.kernel_size).reshape(b, self.rel_planes * k2, h, w)  # nn.Unfold order
        return self.conv_w(torch.cat([q, keys], 1)).view(b, self.out_planes // self.share_planes, k2, h, w)

    def conv_path(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        b, d, h, w = q.shape
        return self.shift_conv(torch.cat([q.unsqueeze(1), k.unsqueeze(1), v.view(b, self.out_planes // d, d, h, w)], 1))

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.conv1(x), self.conv2(x), self.conv3(x)
        att = conv = None
        if self.has_attention:
            att = patchwise_aggregation(v, self.attention_weights(q, k), kernel_size=self.kernel_size)
        if self.has_conv:
            conv = self.conv_path(q, k, v)
        return self.combine(att, conv)

    def uncounted_macs(self, inputs: tuple[Tensor, ...], output: Tensor) -> int:
        """The aggregation's ``k*k`` MACs per output value (elementwise; FLOP counters miss it)."""
        return self.kernel_size**2 * output.numel() if self.has_attention else 0

    def extra_repr(self) -> str:
        return (f"rel_planes={self.rel_planes}, out_planes={self.out_planes}, share_planes={self.share_planes}, "
                f"kernel_size={self.kernel_size}, combination={self.combination.value}, shift={self.shift.value}")


class SANBlock(nn.Module):
    """Pre-activation SAN block: ``x + conv(relu(bn2(sam(relu(bn1(x))))))``."""

    def __init__(self, planes: int, *, kernel_size: int = 7, share_planes: int = 8, acmix: bool = False,
                 combination: Combination | str | None = None, shift: ShiftMode | str = ShiftMode.GROUPED,
                 drop_path: float = 0.0, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if planes % 16:
            raise ValueError(f"SAN block width must be a multiple of 16, got {planes}")
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        mid = planes // 4
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.sam = SAM(planes, planes // 16, mid, share_planes=share_planes, kernel_size=kernel_size,
                       acmix=acmix, combination=combination, shift=shift, **dd)
        self.bn2 = nn.BatchNorm2d(mid, **dd)
        self.conv = nn.Conv2d(mid, planes, 1, **dd)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(x))
        out = self.relu(self.bn2(self.sam(out)))
        return x + self.drop_path(self.conv(out))


class SANStem(nn.Module):
    def __init__(self, in_chans: int, out_chs: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chs, 1, bias=False, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(out_chs, device=device, dtype=dtype)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SANStage(nn.Module):
    """2x2 max-pool, 1x1 transition (no bias), SAN blocks, BN-ReLU."""

    def __init__(self, in_chs: int, out_chs: int, depth: int, *, kernel_size: int, share_planes: int = 8,
                 acmix: bool = False, combination: Combination | str | None = None,
                 shift: ShiftMode | str = ShiftMode.GROUPED, drop_path: Sequence[float] = (), device=None,
                 dtype=None) -> None:
        super().__init__()
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.grad_checkpointing = False
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)  # odd sizes: the last row / column is pooled alone
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False, **dd)
        dpr = list(drop_path) or [0.0] * depth
        self.blocks = nn.Sequential(*[
            SANBlock(out_chs, kernel_size=kernel_size, share_planes=share_planes, acmix=acmix,
                     combination=combination, shift=shift, drop_path=dpr[i], **dd) for i in range(depth)])
        self.norm = nn.BatchNorm2d(out_chs, **dd)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(self.pool(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.act(self.norm(x))


class SAN(nn.Module):
    """SAN patchwise network (``acmix=False``) or SAN-ACmix (``acmix=True``).

    Args:
        layers: blocks per stage (five stages).  kernels: attention window per stage.
        widths: stage widths (SAN: 64, 256, 512, 1024, 2048), multiples of 16.
        stem_chs: stem width.  share_planes: value channels sharing a weight map.
        acmix: add ACmix's convolution path to every SAM (``combination="learned"``).
        combination, shift: the paper's ablation switches for every SAM (:class:`SAM`).
        in_chans, num_classes, global_pool, drop_rate, drop_path_rate: as in timm.
    """

    def __init__(self, layers: Sequence[int] = (2, 1, 2, 4, 1), kernels: Sequence[int] = (3, 7, 7, 7, 7),
                 widths: Sequence[int] = (64, 256, 512, 1024, 2048), *, stem_chs: int = 64,
                 share_planes: int = 8, acmix: bool = False, combination: Combination | str | None = None,
                 shift: ShiftMode | str = ShiftMode.GROUPED, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not (len(layers) == len(kernels) == len(widths) == 5):
            raise ValueError(f"layers, kernels and widths need 5 entries each, got {layers!r}, {kernels!r}, "
                             f"{widths!r}")
        for i, n in enumerate(layers):
            check_positive(n, f"layers[{i}]")
        for value, name in ((in_chans, "in_chans"), (stem_chs, "stem_chs")):
            check_positive(value, name)
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.grad_checkpointing = False
        self.stem = SANStem(in_chans, stem_chs, **dd)
        dpr = torch.linspace(0, drop_path_rate, sum(layers)).tolist()
        stages, prev, cur = [], stem_chs, 0
        self.feature_info: list[dict] = []
        for i, (n, k, c) in enumerate(zip(layers, kernels, widths)):
            stages.append(SANStage(prev, c, n, kernel_size=k, share_planes=share_planes, acmix=acmix,
                                   combination=combination, shift=shift,
                                   drop_path=dpr[cur:cur + n], **dd))
            prev, cur = c, cur + n
            if i > 0:
                self.feature_info.append(dict(num_chs=c, reduction=2 ** (i + 1), module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = prev
        self.pool_type = global_pool
        self.global_pool, self.fc = create_classifier(prev, num_classes, pool_type=global_pool, **dd)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.blocks\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable  # type: ignore[assignment]  # torch types Module.__setattr__ values as Tensor | Module

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        p = next(self.parameters())
        self.num_classes, pool = classifier_args(self, num_classes, global_pool, POOLS)
        if pool is not None:
            self.pool_type = pool
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=self.pool_type,
                                                      device=p.device, dtype=p.dtype)

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Features of stages 1-4 (strides 4, 8, 16, 32); ``indices`` index :attr:`feature_info`."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: SAN gives 'NCHW' features only")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.stem(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index + 2]
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i - 1 in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        self.stages = self.stages[:max_index + 2]
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, Any], model: SAN) -> dict[str, Tensor]:
    """Map a checkpoint of the authors' SAN (``module.``-prefixed, maybe under ``state_dict``) to this layout."""
    out = {}
    for k, v in unwrap_state_dict(state_dict).items():
        if k.startswith(("conv_in.", "bn_in.")):
            k = ("stem.conv." if k.startswith("conv_in.") else "stem.bn.") + k.split(".", 1)[1]
        elif k[:4] in ("conv", "laye") or k[:2] == "bn":
            head, rest = k.split(".", 1)
            for prefix, target in (("layer", "blocks"), ("conv", "conv"), ("bn", "norm")):
                idx = head.removeprefix(prefix)
                if head.startswith(prefix) and idx.isdigit():
                    k = f"stages.{idx}.{target}.{rest}"
                    break
        out[k] = v
    return out


def _create_san(variant: str, pretrained: bool = False, **kwargs: Any) -> SAN:
    check_model_kwargs(variant, kwargs, num_features=4, pools=POOLS)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return with_input_check(build_model_with_cfg(SAN, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls="getter", out_indices=out_indices), **kwargs), variant)


def _cfg(**kwargs: Any) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv", "classifier": "fc", "license": "mit", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "san10_patchwise": _cfg(),
    "san15_patchwise": _cfg(),
    "san19_patchwise": _cfg(),
    "acmix_san10": _cfg(license="apache-2.0"),
    "acmix_san15": _cfg(license="apache-2.0"),
    "acmix_san19": _cfg(license="apache-2.0"),
})

_DEPTHS = {10: (2, 1, 2, 4, 1), 15: (3, 2, 3, 5, 2), 19: (3, 3, 4, 6, 3)}
_KERNELS = (3, 7, 7, 7, 7)


@register_model
def san10_patchwise(pretrained: bool = False, **kwargs: Any) -> SAN:
    """SAN10 patchwise (Zhao et al. 2020), 11.8M params."""
    return _create_san("san10_patchwise", pretrained, **dict(dict(layers=_DEPTHS[10], kernels=_KERNELS), **kwargs))


@register_model
def san15_patchwise(pretrained: bool = False, **kwargs: Any) -> SAN:
    """SAN15 patchwise (Zhao et al. 2020), 16.2M params."""
    return _create_san("san15_patchwise", pretrained, **dict(dict(layers=_DEPTHS[15], kernels=_KERNELS), **kwargs))


@register_model
def san19_patchwise(pretrained: bool = False, **kwargs: Any) -> SAN:
    """SAN19 patchwise (Zhao et al. 2020), 20.5M params."""
    return _create_san("san19_patchwise", pretrained, **dict(dict(layers=_DEPTHS[19], kernels=_KERNELS), **kwargs))


@register_model
def acmix_san10(pretrained: bool = False, **kwargs: Any) -> SAN:
    """SAN-ACmix-10 (Pan et al. 2022, App. C)."""
    return _create_san("acmix_san10", pretrained,
                       **dict(dict(layers=_DEPTHS[10], kernels=_KERNELS, acmix=True), **kwargs))


@register_model
def acmix_san15(pretrained: bool = False, **kwargs: Any) -> SAN:
    """SAN-ACmix-15 (Pan et al. 2022, App. C)."""
    return _create_san("acmix_san15", pretrained,
                       **dict(dict(layers=_DEPTHS[15], kernels=_KERNELS, acmix=True), **kwargs))


@register_model
def acmix_san19(pretrained: bool = False, **kwargs: Any) -> SAN:
    """SAN-ACmix-19 (Pan et al. 2022, App. C)."""
    return _create_san("acmix_san19", pretrained,
                       **dict(dict(layers=_DEPTHS[19], kernels=_KERNELS, acmix=True), **kwargs))
