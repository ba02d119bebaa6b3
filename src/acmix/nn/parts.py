"""``ConvPathMixer``: the base every ACmix-style module shares.

ACmix adds the same pieces to every attention layer it meets (ResNet's ``ACmix``,
Swin's window attention, PVT's spatial-reduction attention, SAN's patchwise
module): the convolution path (``fc`` mixing ``P`` feature pieces into ``k*k``
maps, shifted and summed by ``dep_conv`` or a shift kernel) and the rates that
combine it with the attention path.  This base owns them once: construction for
every ``combination`` / ``shift`` of the paper's ablations (Tab. 6 / Tab. 7), the
shift init, ``reset_conv_path``, the call into :func:`acmix.ops.shift_conv` and the
combination of the two paths.  The names stay the authors' (``fc``, ``dep_conv``,
``rate1``, ``rate2``), set on the subclass itself, so state-dict keys keep their
checkpoint layout.  The exact semantics are in ``docs/operator.md``.
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import Tensor, nn

from ..ops.common import mix, shift_kernel
from ..ops.config import Combination, ShiftMode, as_enum, check_bool, check_odd, check_positive, check_rates
from ..ops.functional import shift_conv

__all__ = ["ConvPathMixer", "FactoryKwargs", "resolve_combination", "shift_init_"]


class FactoryKwargs(TypedDict):
    """``device`` and ``dtype`` for torch's factories and module constructors (``**dd``), typed per key."""

    device: torch.device | str | None
    dtype: torch.dtype | None


@torch.no_grad()
def shift_init_(weight: Tensor) -> None:
    """Set a ``(C_out, k*k, k, k)`` group-conv kernel to the k*k one-hot shifts (Fig. 3 c.II/c.III)."""
    weight.copy_(shift_kernel(weight.shape[-1], device=weight.device, dtype=weight.dtype).expand_as(weight))


def resolve_combination(acmix: bool, combination: Combination | str | None) -> Combination | str:
    """``combination`` if given, else ``"learned"`` (``acmix=True``) or ``"attention"`` (the baseline)."""
    if combination is not None:
        return combination
    return Combination.LEARNED if acmix else Combination.ATTENTION


class ConvPathMixer(nn.Module):
    """Base class: ACmix's convolution path, the rates, and how the two paths combine.

    Subclasses call ``super().__init__()`` and then :meth:`_init_conv_path` where the
    parameters belong in their layout, compute ``P`` pieces of ``head_dim`` channels
    (``(B, P, head_dim, H, W)``) for :meth:`shift_conv`, and return
    :meth:`combine` of the two paths (``None`` for a path the combination drops).

    ``combination``: ``"learned"`` (``rate1 * att + rate2 * conv``, learnable rates),
    ``"fixed"`` (the rates are buffers), ``"attention"`` (no convolution path) or
    ``"conv"`` (no attention path).  ``shift``: ``"grouped"`` (``dep_conv``, one
    learnable kernel per output channel, the authors'), ``"learnable"`` (one learnable
    kernel per ``head_dim`` group, ``shift_weight``), ``"fixed"`` (that kernel as a
    buffer) or ``"tensor"`` (shifted views, no kernel).
    """

    # Set by `_init_conv_path` where the configuration has them (annotations only: no class attributes).
    fc: nn.Conv2d
    dep_conv: nn.Conv2d
    rate1: Tensor
    rate2: Tensor

    def _init_conv_path(self, *, pieces: int, head_dim: int, out_channels: int, kernel_conv: int = 3,
                        stride: int = 1, combination: Combination | str = Combination.LEARNED,
                        shift: ShiftMode | str = ShiftMode.GROUPED, rates: tuple[float, float] = (0.5, 0.5),
                        fc_bias: bool = False, conv_bias: bool = False,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        """Register ``fc`` / ``dep_conv`` (or ``shift_weight`` / ``shift_bias``) and ``rate1`` / ``rate2``."""
        self.combination = as_enum(Combination, combination, "combination")
        self.shift = as_enum(ShiftMode, shift, "shift")
        self.has_attention = self.combination is not Combination.CONV
        self.has_conv = self.combination is not Combination.ATTENTION
        pieces, head_dim, out_channels, stride = (check_positive(v, n) for v, n in (
            (pieces, "pieces"), (head_dim, "head_dim"), (out_channels, "out_channels"), (stride, "stride")))
        kernel_conv = check_odd(kernel_conv, "kernel_conv")
        conv_bias, fc_bias = check_bool(conv_bias, "conv_bias"), check_bool(fc_bias, "fc_bias")
        if self.has_conv and out_channels % head_dim:
            raise ValueError(f"out_channels={out_channels} is not divisible by head_dim={head_dim} "
                             "(the convolution path's groups)")
        self.kernel_conv, self.conv_stride, self.conv_out_channels = kernel_conv, stride, out_channels
        self.rates = check_rates(rates)
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        k2 = kernel_conv * kernel_conv
        if self.has_conv:
            self.fc = nn.Conv2d(pieces, k2, 1, bias=fc_bias, **dd)
            if self.shift is ShiftMode.GROUPED:
                self.dep_conv = nn.Conv2d(k2 * head_dim, out_channels, kernel_conv, stride=stride,
                                          padding=kernel_conv // 2, groups=head_dim, bias=conv_bias, **dd)
            else:
                shape = (head_dim, k2, kernel_conv, kernel_conv)
                if self.shift is ShiftMode.LEARNABLE:
                    self.shift_weight = nn.Parameter(torch.empty(shape, **dd))
                elif self.shift is ShiftMode.FIXED:
                    self.register_buffer("shift_weight", torch.empty(shape, **dd))
                if conv_bias:
                    self.shift_bias = nn.Parameter(torch.empty(out_channels, **dd))
        if self.has_attention and self.has_conv:
            for name in ("rate1", "rate2"):
                value = torch.empty(1, **dd)
                if self.combination is Combination.LEARNED:
                    setattr(self, name, nn.Parameter(value))
                else:
                    self.register_buffer(name, value)

    @property
    def conv_weight(self) -> Tensor | None:
        """The shift kernel: ``dep_conv.weight`` (grouped), ``shift_weight``, or None (tensor shift, no path)."""
        if hasattr(self, "dep_conv"):
            return self.dep_conv.weight
        return getattr(self, "shift_weight", None)

    @property
    def conv_bias(self) -> Tensor | None:
        if hasattr(self, "dep_conv"):
            return self.dep_conv.bias
        return getattr(self, "shift_bias", None)

    @torch.no_grad()
    def reset_conv_path(self) -> None:
        """Default ``fc`` init, shift init of the kernel, zero bias, the initial (or fixed) rates."""
        if self.has_conv:
            self.fc.reset_parameters()
            if self.conv_weight is not None:
                shift_init_(self.conv_weight)
            if self.conv_bias is not None:
                self.conv_bias.zero_()
        if hasattr(self, "rate1"):
            self.rate1.fill_(self.rates[0])
            self.rate2.fill_(self.rates[1])

    def shift_conv(self, pieces: Tensor) -> Tensor:
        """``(B, P, head_dim, H, W)`` pieces -> ``(B, out_channels, Ho, Wo)`` through :func:`acmix.ops.shift_conv`."""
        return shift_conv(pieces, self.fc.weight, self.conv_weight, self.conv_bias, kernel_conv=self.kernel_conv,
                          out_channels=self.conv_out_channels, stride=self.conv_stride, shift=self.shift,
                          fc_bias=self.fc.bias)

    def combine(self, att: Tensor | None, conv: Tensor | None) -> Tensor:
        """``rate1 * att + rate2 * conv`` (:func:`acmix.ops.common.mix`: in the paths' dtype under autocast),
        or the one path the combination keeps (the other is None)."""
        if att is not None and conv is not None:
            return mix(self.rate1, self.rate2, att, conv)
        out = att if conv is None else conv
        if out is None:
            raise ValueError("combine needs the output of at least one path, got None for both")
        return out
