"""Static configuration of one ACmix layer and the checks on it.

The configuration is everything that is not a tensor: sizes, kernel sizes, the
paper's ablation switches.  It is a frozen dataclass so that the functional op,
every backend and the module read one validated description.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ACmixConfig", "Combination", "ShiftMode", "check_positive"]


class Combination(enum.Enum):
    """How the two Stage-II paths are combined (paper Tab. 6)."""

    LEARNED = "learned"  # rate1 * att + rate2 * conv, rates learnable (default)
    FIXED = "fixed"  # rate1 * att + rate2 * conv, rates fixed buffers
    ATTENTION = "attention"  # attention path only (Swin-T style)
    CONV = "conv"  # convolution path only ("Conv-Swin-T")


class ShiftMode(enum.Enum):
    """How the convolution path shifts and sums (paper Tab. 7 / Fig. 3).

    ``TENSOR`` and ``FIXED`` compute the same fixed shift-and-sum, once by
    slicing shifted views and once as a group convolution with one-hot kernels;
    ``LEARNABLE`` makes that kernel learnable (one kernel per ``head_dim``
    group, its output repeated to ``out_channels``); ``GROUPED`` (the default
    and the authors' layer) learns one kernel per output channel.
    """

    TENSOR = "tensor"
    FIXED = "fixed"
    LEARNABLE = "learnable"
    GROUPED = "grouped"


def _enum(kind: type[enum.Enum], value: object, name: str) -> enum.Enum:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{name}={value!r} is not one of {choices}") from None


def check_positive(value: object, name: str) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a positive int (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _odd(value: int, name: str) -> None:
    check_positive(value, name)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd, got {value}")


@dataclass(frozen=True)
class ACmixConfig:
    """Validated static description of an ACmix layer (docs/operator.md).

    ``stride`` subsamples the query side: the output is ``(H - 1) // stride + 1``
    by ``(W - 1) // stride + 1``.  ``dilation`` applies to the attention window.
    """

    in_channels: int
    out_channels: int
    heads: int = 4
    kernel_att: int = 7
    kernel_conv: int = 3
    stride: int = 1
    dilation: int = 1
    position_encoding: bool = True
    combination: Combination = Combination.LEARNED
    shift: ShiftMode = ShiftMode.GROUPED

    def __post_init__(self) -> None:
        check_positive(self.in_channels, "in_channels")
        check_positive(self.out_channels, "out_channels")
        check_positive(self.heads, "heads")
        _odd(self.kernel_att, "kernel_att")
        _odd(self.kernel_conv, "kernel_conv")
        check_positive(self.stride, "stride")
        check_positive(self.dilation, "dilation")
        if self.out_channels % self.heads:
            raise ValueError(
                f"out_channels={self.out_channels} is not divisible by heads={self.heads}"
            )
        object.__setattr__(self, "combination", _enum(Combination, self.combination, "combination"))
        object.__setattr__(self, "shift", _enum(ShiftMode, self.shift, "shift"))

    @property
    def head_dim(self) -> int:
        return self.out_channels // self.heads

    @property
    def has_attention(self) -> bool:
        return self.combination is not Combination.CONV

    @property
    def has_conv(self) -> bool:
        return self.combination is not Combination.ATTENTION

    @property
    def att_padding(self) -> int:
        return self.dilation * (self.kernel_att - 1) // 2

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (height - 1) // self.stride + 1, (width - 1) // self.stride + 1
