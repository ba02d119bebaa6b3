"""Drop-in ACmix: swap a network's k x k convolutions for :class:`ACmix` layers.

A replaced ``nn.Conv2d(c_in, c_out, k, stride, padding=k // 2)`` becomes
``ACmix(c_in, c_out, kernel_conv=k, stride=stride)`` on the conv's device and
dtype: the output shape is the same at every input size, so the host network
(BN, activation, residuals, heads) runs unchanged.  The new layers start from
ACmix's own initialisation; the conv weights are not converted (no ACmix
setting computes a general k x k convolution).

What is refused, with the layer's name: grouped or depthwise convs (the
replacement would not be a like-for-like layer), dilated convs, a padding other
than ``k // 2`` (the output size would change), non-square or even kernels, and
``nn.Conv2d`` subclasses (``Conv2dSame`` and others change the padding in
``forward``).

A BatchNorm after a replaced conv stays a separate module: it cannot be folded
into ACmix exactly, because the values ``v`` that the attention averages also
feed the convolution path through ``fc``, which is shared by all channels of a
head.  Host ``fuse()`` methods that fold conv + BN pairs must skip ACmix layers
(:func:`is_foldable_conv` tells them apart).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from torch import nn

from ..ops.config import check_odd, check_positive
from .acmix import ACmix

__all__ = ["Replacement", "choose_heads", "is_foldable_conv", "replace_convs"]


class Replacement(NamedTuple):
    """One swapped layer: its qualified name, the conv it was and the ACmix it became."""

    name: str
    conv: str
    acmix: str

    def __str__(self) -> str:
        return f"{self.name}: {self.conv} -> {self.acmix}"


def choose_heads(channels: int, heads: int) -> int:
    """The largest head count ``<= heads`` that divides ``channels`` (1 always does)."""
    heads = check_positive(heads, "heads")  # heads=True would mean 1, heads=2.5 failed in range()
    for h in range(min(heads, channels), 0, -1):
        if channels % h == 0:
            return h
    raise ValueError(f"heads must be a positive int, got {heads!r}")


def is_foldable_conv(module: nn.Module) -> bool:
    """Whether a host's conv + BN folding may treat ``module`` as a plain ``nn.Conv2d``."""
    return isinstance(module, nn.Conv2d)


def _describe(conv: nn.Conv2d) -> str:
    k, s = conv.kernel_size, conv.stride
    return (f"Conv2d({conv.in_channels}, {conv.out_channels}, {k[0]}x{k[1]}, stride={s[0]}, "
            f"groups={conv.groups}, bias={conv.bias is not None})")


def _check(name: str, conv: nn.Conv2d) -> None:
    """``ValueError`` naming the layer if ACmix cannot stand in for it."""
    if type(conv) is not nn.Conv2d:
        raise ValueError(f"{name}: {type(conv).__name__} is a Conv2d subclass with its own forward; "
                         f"only plain nn.Conv2d layers are replaced")
    k, s, d, p = conv.kernel_size, conv.stride, conv.dilation, conv.padding
    if k[0] != k[1] or k[0] % 2 == 0:
        raise ValueError(f"{name}: kernel {k[0]}x{k[1]} is not square and odd")
    if s[0] != s[1]:
        raise ValueError(f"{name}: stride {s} differs between H and W")
    if conv.groups != 1:
        raise ValueError(f"{name}: groups={conv.groups} (grouped/depthwise convs are not replaced)")
    if d != (1, 1):
        raise ValueError(f"{name}: dilation={d} (dilated convs are not replaced)")
    same = p == "same" or (isinstance(p, tuple) and p == (k[0] // 2, k[1] // 2))
    if not same:
        raise ValueError(f"{name}: padding={p} would change the output size; ACmix pads by kernel // 2")


def replace_convs(model: nn.Module, *, kernel_size: int | None = 3,
                  include: Callable[[str, nn.Conv2d], bool] | Iterable[str] | None = None,
                  heads: int | Callable[[str, nn.Conv2d], int] = 4, kernel_att: int = 7,
                  verbose: bool = False, **acmix_kwargs: Any) -> list[Replacement]:
    """Replace selected ``nn.Conv2d`` layers of ``model`` in place by :class:`ACmix`.

    Args:
        model: any network; changed in place.
        kernel_size: replace the convs with this kernel (``None``: any kernel).
            Used only when ``include`` is not a list of names.
        include: a predicate ``(name, conv) -> bool`` (on top of ``kernel_size``)
            or the qualified names of the convs to replace (every name must be a
            conv ACmix can stand in for, else ``ValueError``).
        heads: the most attention heads; each layer takes the largest count that
            divides its output width.  A callable ``(name, conv) -> int`` gives
            the exact count, which must divide the width.
        kernel_att: attention window of every new layer.
        verbose: print each replacement.
        acmix_kwargs: more :class:`ACmix` arguments (``combination``, ``shift``,
            ``backend``, ...).  ``conv_bias`` defaults to whether the conv had a bias.

    Returns:
        One :class:`Replacement` per swapped layer, in module order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if kernel_size is not None:
        kernel_size = check_odd(kernel_size, "kernel_size")  # 0 or '3' silently matched no conv
    if isinstance(include, (str, bytes)):  # a string is an iterable of one-character names
        raise TypeError(f"include must be a list of conv names or a predicate, got the string {include!r}")
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if include is None or callable(include):
        chosen = [n for n, m in convs.items()
                  if (kernel_size is None or m.kernel_size == (kernel_size, kernel_size))
                  and (include is None or include(n, m))]
        for n in chosen:
            _check(n, convs[n])
    else:
        chosen = list(dict.fromkeys(include))
        for n in chosen:
            if n not in convs:
                raise ValueError(f"{n!r} is not an nn.Conv2d of the model")
            _check(n, convs[n])

    plan = []  # every check before the first swap: a refused layer leaves the model untouched
    for name in chosen:
        c_out = convs[name].out_channels
        if callable(heads):
            n_heads = heads(name, convs[name])
            if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads <= 0 or c_out % n_heads:
                raise ValueError(f"{name}: heads={n_heads!r} does not divide out_channels={c_out}")
        else:
            n_heads = choose_heads(c_out, heads)
        plan.append((name, n_heads))

    done = []
    for name, n_heads in plan:
        conv = convs[name]
        c_out = conv.out_channels
        kwargs = {"conv_bias": conv.bias is not None, **acmix_kwargs}
        layer = ACmix(conv.in_channels, c_out, kernel_att=kernel_att, heads=n_heads, kernel_conv=conv.kernel_size[0],
                      stride=conv.stride[0], device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        layer.train(conv.training)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, layer)
        done.append(Replacement(name, _describe(conv), f"ACmix({layer.extra_repr()})"))
        if verbose:
            print(done[-1])
    return done
