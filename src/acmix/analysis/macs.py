"""Multiply-accumulate counting that sees ACmix's elementwise attention.

FLOP counters (``FlopCounterMode``, fvcore, thop, ptflops) count matmuls and
convolutions but give 0 for attention written as multiply + sum over windows
(docs/fast-paths.md).  ``count_macs`` therefore adds, for every module that
defines ``uncounted_macs(inputs, output) -> int``, the MACs its elementwise
work costs, computed analytically from the shapes it saw.  The model runs on
the reference backend, and ``scaled_dot_product_attention`` (Swin's and PVT's
attention) on its math path, so the count does not depend on which fast path
is installed: the FLOP counter scores the fused CPU SDPA kernels 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..ops.functional import Backend, use_backend

__all__ = ["count_macs"]


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 224, 224), *,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> int:
    """MACs of one forward pass of ``model`` on a zero input of ``input_size``."""
    extra = 0

    def hook(module: Any, inputs: tuple, output: Any) -> None:  # only on modules with `uncounted_macs`
        nonlocal extra
        extra += int(module.uncounted_macs(inputs, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if hasattr(m, "uncounted_macs")]
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(input_size, device=device, dtype=dtype)
        with use_backend(Backend.REFERENCE), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return counter.get_total_flops() // 2 + extra
