"""Parameter holders every ACmix-style module shares: the convolution path and the rates.

The names stay the authors' (``fc``, ``dep_conv``, ``rate1``, ``rate2``) and are set
directly on the owning module, so state-dict keys keep their checkpoint layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.common import shift_kernel

__all__ = ["add_conv_path", "add_rates", "reset_rates", "shift_init_"]


@torch.no_grad()
def shift_init_(weight: Tensor) -> None:
    """Set a ``(C_out, k*k, k, k)`` group-conv kernel to the k*k one-hot shifts (Fig. 3 c.II/c.III)."""
    weight.copy_(shift_kernel(weight.shape[-1], device=weight.device, dtype=weight.dtype).expand_as(weight))


def add_conv_path(module: nn.Module, *, pieces: int, head_dim: int, out_channels: int, kernel_conv: int,
                  fc_bias: bool = False, conv_bias: bool = False, stride: int = 1,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
    """``module.fc`` (1x1, ``pieces -> k*k``) and ``module.dep_conv`` (group conv, ``head_dim`` groups), shift-init."""
    k2 = kernel_conv * kernel_conv
    module.fc = nn.Conv2d(pieces, k2, 1, bias=fc_bias, device=device, dtype=dtype)
    module.dep_conv = nn.Conv2d(k2 * head_dim, out_channels, kernel_conv, stride=stride, padding=kernel_conv // 2,
                                groups=head_dim, bias=conv_bias, device=device, dtype=dtype)
    shift_init_(module.dep_conv.weight)
    if conv_bias:
        nn.init.zeros_(module.dep_conv.bias)


def add_rates(module: nn.Module, *, learnable: bool = True, device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> None:
    """``module.rate1`` / ``module.rate2``: scalar parameters, or buffers when the rates are fixed."""
    for name in ("rate1", "rate2"):
        value = torch.empty(1, device=device, dtype=dtype)
        if learnable:
            setattr(module, name, nn.Parameter(value))
        else:
            module.register_buffer(name, value)


@torch.no_grad()
def reset_rates(module: nn.Module, rates: tuple[float, float]) -> None:
    module.rate1.fill_(rates[0])
    module.rate2.fill_(rates[1])
