"""ACmix backbones for detection and segmentation (torchvision detectors, segmentation_models_pytorch).

Every family's ``features_only`` model lists its levels in ``feature_info``, but
the layouts differ: ResNet-ACmix has five levels (the stem at reduction 2, then
4, 8, 16, 32: ``out_indices`` 1-4 are the stages), SAN-, PVT- and Swin-ACmix
have four (reductions 4-32, ``out_indices`` 0-3).  :func:`fpn_backbone` picks
levels by *reduction*, so one call serves every family, and puts torchvision's
FPN on top; :func:`detector` builds FasterRCNN, MaskRCNN, RetinaNet or FCOS on
it.  :func:`segmentation_model` builds an smp model on a ``tu-acmix_*`` encoder
and refuses an ``output_stride`` the family cannot give.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import timm
import torch
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .models._checks import known_model

if TYPE_CHECKING:
    from timm.models._features import FeatureInfo

__all__ = ["DETECTORS", "FPNBackbone", "detector", "dilatable", "fpn_backbone", "segmentation_model"]

# detector -> (torchvision class path, backbone reductions, FPN extra block)
DETECTORS: dict[str, tuple[str, tuple[int, ...], str]] = {
    "fasterrcnn": ("torchvision.models.detection.FasterRCNN", (4, 8, 16, 32), "pool"),
    "maskrcnn": ("torchvision.models.detection.MaskRCNN", (4, 8, 16, 32), "pool"),
    "retinanet": ("torchvision.models.detection.RetinaNet", (8, 16, 32), "p6p7"),
    "fcos": ("torchvision.models.detection.FCOS", (8, 16, 32), "p6p7"),
}


class FPNBackbone(nn.Module):
    """A timm ``features_only`` body, the levels at ``reductions``, torchvision's FPN on them.

    ``forward`` returns an ``OrderedDict`` ``"0", "1", ...`` (finest first) plus
    ``"pool"`` or ``"p6"``/``"p7"`` from the extra block, the layout torchvision's
    detectors and ``MultiScaleRoIAlign`` expect; :attr:`out_channels` is set.
    """

    def __init__(self, body: nn.Module, reductions: Sequence[int], out_channels: int = 256,
                 extra_blocks: str | None = "pool") -> None:
        super().__init__()
        if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels <= 0:
            raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
        if not reductions:  # an FPN over no level builds, then fails at its first forward
            raise ValueError("reductions is empty; give the feature levels, e.g. (4, 8, 16, 32)")
        info = cast("FeatureInfo", body.feature_info)  # timm's features_only models carry one
        have = list(info.reduction())
        missing = [r for r in reductions if r not in have]
        if missing:
            raise ValueError(f"reductions {missing} are not among the model's feature reductions {have}")
        self.body = body
        self.levels = [have.index(r) for r in reductions]
        self.reductions = tuple(reductions)
        channels = [info.channels()[i] for i in self.levels]
        if extra_blocks == "pool":
            extra = LastLevelMaxPool()
        elif extra_blocks == "p6p7":
            extra = LastLevelP6P7(out_channels, out_channels)
        elif extra_blocks is None:
            extra = None
        else:
            raise ValueError(f"extra_blocks={extra_blocks!r} is not one of 'pool', 'p6p7', None")
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), feats[j]) for i, j in enumerate(self.levels)))


def _check_name(name: str) -> None:
    """One ``ValueError`` for a name timm does not know (timm raises a ``RuntimeError``)."""
    if not known_model(name):
        raise ValueError(f"unknown model {name!r}")


def fpn_backbone(name: str, *, reductions: Sequence[int] = (4, 8, 16, 32), out_channels: int = 256,
                 extra_blocks: str | None = "pool", pretrained: bool = False, **model_kwargs: Any) -> FPNBackbone:
    """``timm.create_model(name, features_only=True, ...)`` + FPN, for any ACmix (or timm) family.

    ``reductions`` choose the levels (FasterRCNN / MaskRCNN: 4-32 with ``"pool"``;
    RetinaNet / FCOS: 8-32 with ``"p6p7"``); ``model_kwargs`` go to the model
    (e.g. ``depths``, ``embed_dims``, ``pretrained_cfg_overlay``).
    """
    _check_name(name)
    body = timm.create_model(name, pretrained=pretrained, features_only=True, **model_kwargs)
    return FPNBackbone(body, reductions, out_channels, extra_blocks)


def detector(kind: str, name: str, num_classes: int, *, out_channels: int = 256, pretrained: bool = False,
             model_kwargs: dict[str, Any] | None = None, **detector_kwargs: Any) -> nn.Module:
    """A torchvision detector (``DETECTORS``) on :func:`fpn_backbone` with its levels and extra block.

    ``detector_kwargs`` go to the detector (``min_size``, ``max_size``,
    ``size_divisible``, ``box_detections_per_img``, ...); torchvision's default
    anchors match the five FPN outputs.
    """
    if kind not in DETECTORS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(map(repr, DETECTORS))}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1 (torchvision counts the background), got {num_classes!r}")
    path, reductions, extra = DETECTORS[kind]
    module, _, cls = path.rpartition(".")
    backbone = fpn_backbone(name, reductions=reductions, out_channels=out_channels, extra_blocks=extra,
                            pretrained=pretrained, **(model_kwargs or {}))
    return getattr(__import__(module, fromlist=[cls]), cls)(backbone, num_classes=num_classes, **detector_kwargs)


def dilatable(name: str) -> bool:
    """Whether ``name`` accepts ``output_stride`` 8/16 (timm's dilation), as smp's DeepLab needs.

    ResNet-ACmix (timm's ByobNet) dilates its later stages; the transformer-style
    families (SAN, PVT, Swin) have no dilated form of their downsampling and cannot.
    """
    _check_name(name)
    with torch.device("meta"):
        try:
            timm.create_model(name, features_only=True, output_stride=16)
        except TypeError:
            return False
    return True


def segmentation_model(arch: str, name: str, *, output_stride: int | None = None, classes: int = 1,
                       pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``segmentation_models_pytorch.create_model(arch, encoder_name="tu-" + name, ...)`` with a clear error
    when ``output_stride`` (or DeepLab's default 16) asks a family that cannot dilate."""
    import segmentation_models_pytorch as smp

    deeplab = arch.lower().startswith("deeplab")
    if output_stride is None and deeplab:
        output_stride = 16  # smp's DeepLab default
    if output_stride not in (None, 32):
        if not deeplab:
            raise ValueError(f"output_stride={output_stride!r}: only smp's DeepLabV3 / DeepLabV3Plus dilate the "
                             f"encoder, {arch!r} runs at 32")
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        if not dilatable(name):
            raise ValueError(f"{name} cannot run at output_stride={output_stride}: its stages downsample in "
                             f"patch embeddings or merges, not in dilatable convs (use Unet, FPN or UPerNet)")
        kwargs["encoder_output_stride"] = output_stride
    try:
        return smp.create_model(arch, encoder_name=f"tu-{name}", encoder_weights="imagenet" if pretrained else None,
                                classes=classes, **kwargs)
    except KeyError as e:  # smp: an unknown architecture, with the list of known ones
        raise ValueError(str(e.args[0]) if e.args else f"arch={arch!r} is not an smp architecture") from None
