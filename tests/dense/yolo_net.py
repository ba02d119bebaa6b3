"""A small YOLO-style network (Conv-BN-SiLU units, C2f blocks, a fuse() that folds BN) for the drop-in tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from acmix.nn.replace import is_foldable_conv


class ConvUnit(nn.Module):
    """Conv2d (no bias) + BN + SiLU; ``fuse`` folds the BN into the conv where the conv is a plain Conv2d."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> bool:
        if not is_foldable_conv(self.conv) or isinstance(self.bn, nn.Identity):
            return False
        self.conv = fuse_conv_bn_eval(self.conv, self.bn)
        self.bn = nn.Identity()
        return True


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = ConvUnit(c, c, 3)
        self.cv2 = ConvUnit(c, c, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """Split the 1x1 output in two halves, chain bottlenecks on one, concatenate every intermediate, 1x1."""

    def __init__(self, c_in: int, c_out: int, n: int = 1) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvUnit(c_in, 2 * self.c, 1)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = ConvUnit((2 + n) * self.c, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        ys = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class TinyYolo(nn.Module):
    """Stem /2, /4, C2f, /8, C2f, and a 1x1 head per scale (stride 4 and 8)."""

    def __init__(self, width: int = 16, num_outputs: int = 6) -> None:
        super().__init__()
        w = width
        self.stem = ConvUnit(3, w, 3, 2)
        self.down1 = ConvUnit(w, 2 * w, 3, 2)
        self.c2f1 = C2f(2 * w, 2 * w)
        self.down2 = ConvUnit(2 * w, 4 * w, 3, 2)
        self.c2f2 = C2f(4 * w, 4 * w)
        self.head4 = nn.Conv2d(2 * w, num_outputs, 1)
        self.head8 = nn.Conv2d(4 * w, num_outputs, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p4 = self.c2f1(self.down1(self.stem(x)))
        p8 = self.c2f2(self.down2(p4))
        return self.head4(p4), self.head8(p8)

    def fuse(self) -> int:
        """Fold BN into every foldable conv (as detector libraries do before deployment); count folded."""
        return sum(m.fuse() for m in self.modules() if isinstance(m, ConvUnit))
