"""Static configuration of one ACmix layer and the checks on it.

The configuration is everything that is not a tensor: sizes, kernel sizes, the
paper's ablation switches.  It is a frozen dataclass so that the functional op,
every backend and the module read one validated description.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, TypeVar, cast

__all__ = ["ACmixConfig", "Backend", "Combination", "ShiftMode", "as_enum", "check_bool", "check_odd", "check_positive",
           "check_rates"]

E = TypeVar("E", bound=enum.Enum)


class Backend(enum.Enum):
    """The implementations of the op (see :func:`acmix.ops.acmix` and ``docs/fast-paths.md``).

    ``CPU_KERNEL`` was called ``COMPILED`` (it is a C++ kernel compiled on first
    use, not ``torch.compile``); the old name and the string ``'compiled'`` still work.
    """

    AUTO = "auto"
    REFERENCE = "reference"
    EAGER = "eager"
    CPU_KERNEL = "cpu_kernel"
    TRITON = "triton"
    COMPILED = "cpu_kernel"  # alias of CPU_KERNEL

    @classmethod
    def _missing_(cls, value: object) -> Backend | None:
        return cls.CPU_KERNEL if value == "compiled" else None


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


def as_enum(kind: type[E], value: object, name: str) -> E:
    """``value`` as a member of ``kind`` (a member or its string value); ``ValueError`` naming ``name`` else."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{name}={value!r} is not one of {choices}") from None


def check_positive(value: object, name: str) -> int:
    """``value`` as an ``int`` if it is a positive integer (numpy integers too, bools rejected).

    Raises a ``ValueError`` naming ``name`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_odd(value: object, name: str) -> int:
    """``value`` as an ``int`` if it is a positive odd integer; ``ValueError`` naming ``name`` else."""
    value = check_positive(value, name)
    if value % 2 == 0:
        raise ValueError(f"{name} must be odd, got {value}")
    return value


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is a bool (numpy bools too); strings such as ``'no'`` are refused, not read as true."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_, without importing numpy
        return bool(value)
    raise ValueError(f"{name} must be a bool, got {value!r}")


def check_rates(rates: object) -> tuple[float, float]:
    """The initial (or fixed) ``(rate1, rate2)`` pair as finite floats; ``ValueError`` naming the value else."""
    try:
        pair = tuple(float(r) for r in cast("Iterable[Any]", rates))  # TypeError below if it is not iterable
    except (TypeError, ValueError):
        raise ValueError(f"rates must be a pair of numbers (rate1, rate2), got {rates!r}") from None
    if len(pair) != 2:
        raise ValueError(f"rates must be a pair (rate1, rate2), got {rates!r}")
    if not all(math.isfinite(r) for r in pair):
        raise ValueError(f"rates must be finite, got {rates!r}")
    return pair[0], pair[1]


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
        checks: dict[str, Callable[[object, str], object]] = {
            "kernel_att": check_odd, "kernel_conv": check_odd, "position_encoding": check_bool,
            "combination": lambda v, n: as_enum(Combination, v, n), "shift": lambda v, n: as_enum(ShiftMode, v, n)}
        for f in fields(self):  # every field checked and normalised (numpy ints become ints)
            check = checks.get(f.name, check_positive)
            object.__setattr__(self, f.name, check(getattr(self, f.name), f.name))
        if self.out_channels % self.heads:
            raise ValueError(
                f"out_channels={self.out_channels} is not divisible by heads={self.heads}"
            )

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
