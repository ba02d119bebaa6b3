"""``acmix_resnet_tiny``: a small ACmix network for 28×28 inputs (Fashion-MNIST, MNIST).

A conv stem takes 28×28 to 14×14, ACmix residual blocks run at 14×14 and, after a
strided conv, at 7×7; global average pooling and a linear classifier finish it.
Every ACmix block uses the library's :class:`acmix.ACmix` layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import DropPath
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from ..nn import ACmix
from ._builder import no_weight_decay_names, reset_linear_head
from ._checks import check_global_pool, check_model_kwargs, with_input_check

__all__ = ["ACmixTinyNet"]

FMNIST_MEAN = (0.2860,)
FMNIST_STD = (0.3530,)
_POOLS = ("avg", "")


def _conv_bn(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False), nn.BatchNorm2d(out_ch),
                         nn.ReLU(inplace=True))


class ACmixBlock(nn.Module):
    """``x + BN(1x1(ReLU(BN(ACmix(x)))))`` followed by ReLU (ACmix in place of the 3×3 conv)."""

    def __init__(self, dim: int, *, heads: int, kernel_att: int, drop_path: float = 0.0,
                 combination: str = "learned", shift: str = "grouped") -> None:
        super().__init__()
        self.acmix = ACmix(dim, dim, kernel_att=kernel_att, heads=heads, kernel_conv=3, combination=combination,
                           shift=shift)
        self.bn1 = nn.BatchNorm2d(dim)
        self.conv = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.bn1(self.acmix(x)))
        y = self.bn2(self.conv(y))
        return self.act(x + self.drop_path(y))


class ACmixTinyNet(nn.Module):
    """Stem (28→14) → ACmix blocks at 14×14 → strided conv → ACmix blocks at 7×7 → pool → fc.

    Args:
        num_classes: classifier outputs (0: no classifier, features only).
        in_chans: input channels (1 for grayscale).
        widths: ``(stem, stage1, stage2)`` channels (stem 0: a single strided conv).  depths: ACmix blocks per stage.
        heads: attention heads of every ACmix layer.  kernel_att: attention window (one, or per stage).
        drop_rate: dropout before the classifier.  drop_path_rate: stochastic depth (linear ramp).
        global_pool: ``"avg"`` or ``""`` (no pooling in :meth:`forward_head`).
        combination, shift: the paper's switches (Tab. 6 / 7) for every ACmix layer.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, *, widths: Sequence[int] = (24, 32, 64),
                 depths: Sequence[int] = (1, 1), heads: int = 4, kernel_att: int | Sequence[int] = (3, 5),
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg",
                 combination: str = "learned", shift: str = "grouped") -> None:
        super().__init__()
        if len(widths) != 3 or len(depths) != 2 or min(widths[1:]) < 1 or min(widths) < 0 or min(depths) < 0:
            raise ValueError(f"widths needs 3 entries (stem >= 0, stages >= 1) and depths 2 (>= 0), "
                             f"got widths={widths!r} depths={depths!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = check_global_pool(global_pool, _POOLS)
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        c0, c1, c2 = widths
        ka = (kernel_att, kernel_att) if isinstance(kernel_att, int) else tuple(kernel_att)
        if len(ka) != 2:
            raise ValueError(f"kernel_att needs 1 or 2 entries (per stage), got {kernel_att!r}")
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        if c0 > 0:
            self.stem = nn.Sequential(_conv_bn(in_chans, c0), _conv_bn(c0, c1, stride=2))
        else:  # no full-resolution conv: one strided conv
            self.stem = nn.Sequential(_conv_bn(in_chans, c1, stride=2))
        switches: dict[str, Any] = {"heads": heads, "combination": combination, "shift": shift}
        self.stage1 = nn.Sequential(*[ACmixBlock(c1, kernel_att=ka[0], drop_path=rates[i], **switches)
                                      for i in range(depths[0])])
        self.down = _conv_bn(c1, c2, stride=2)
        self.stage2 = nn.Sequential(*[ACmixBlock(c2, kernel_att=ka[1], drop_path=rates[depths[0] + i], **switches)
                                      for i in range(depths[1])])
        self.num_features = self.head_hidden_size = c2
        self.feature_info = [dict(num_chs=c1, reduction=2, module="stage1"),
                             dict(num_chs=c2, reduction=4, module="stage2")]
        self.head_drop = nn.Dropout(drop_rate)
        self.fc: nn.Module = nn.Linear(c2, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # PyTorch's default init for the convs; ACmix layers keep their own (shift) init.
        for block in (*self.stage1, *self.stage2):
            nn.init.zeros_(block.bn2.weight)  # each residual block starts as the identity

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=[(r"^stage1", (0,)), (r"^down", (1,)), (r"^stage2", (2,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.fc = reset_linear_head(self, num_classes, global_pool, _POOLS, next(self.parameters()))

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            from timm.models import checkpoint_seq
            x = checkpoint_seq(self.stage1, x)
            x = checkpoint_seq(self.stage2, self.down(x))
            return x
        return self.stage2(self.down(self.stage1(x)))

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm's feature API: the maps after ``stage1`` and ``stage2`` (strides 2, 4); ``indices`` index
        :attr:`feature_info` (an int: the last n)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: acmix_resnet_tiny gives 'NCHW' features only")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.stage1(self.stem(x))
        intermediates = [x] if 0 in take else []
        if not (stop_early and max_index == 0):
            x = self.stage2(self.down(x))
            intermediates += [x] if 1 in take else []
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"url": "", "num_classes": 10, "input_size": (1, 28, 28), "pool_size": (7, 7),
            "crop_pct": 1.0, "interpolation": "bilinear", "mean": FMNIST_MEAN, "std": FMNIST_STD,
            "first_conv": "stem.0.0", "classifier": "fc", "license": "apache-2.0", **kwargs}


default_cfgs = generate_default_cfgs({"acmix_resnet_tiny.untrained": _cfg()})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> ACmixTinyNet:
    check_model_kwargs(variant, kwargs, num_features=2)
    return with_input_check(build_model_with_cfg(ACmixTinyNet, variant, pretrained,
                                feature_cfg=dict(out_indices=(0, 1), flatten_sequential=False), **kwargs), variant)


@register_model
def acmix_resnet_tiny(pretrained: bool = False, **kwargs: Any) -> ACmixTinyNet:
    """Tiny ACmix ResNet for 28×28 inputs (~50k parameters)."""
    return _create("acmix_resnet_tiny", pretrained, **kwargs)
