"""``acmix showcase``: the ACmix layer at the four ResNet-50 stage shapes.

Builds each layer, checks it against the float64 reference on random weights,
and prints parameters, output shape and the largest float32 deviation.
"""

from __future__ import annotations

import time

import torch

from acmix import ACmix
from acmix.ops import acmix_reference

STAGES = [(64, 56), (128, 28), (256, 14), (512, 7)]


def main() -> None:
    torch.manual_seed(0)
    print(f"{'stage':>5} {'C':>4} {'HxW':>7} {'params':>9} {'out shape':>18} {'max |err|':>10} {'fwd ms':>8}")
    for i, (c, hw) in enumerate(STAGES, 1):
        layer = ACmix(c, c)
        x = torch.randn(1, c, hw, hw)
        with torch.no_grad():
            start = time.perf_counter()
            out = layer(x)
            ms = (time.perf_counter() - start) * 1e3
            ref = acmix_reference(x.double(), layer.double().weights(), layer.config).float()
        err = (out - ref).abs().max().item()
        params = sum(p.numel() for p in layer.parameters())
        print(f"{i:>5} {c:>4} {hw:>3}x{hw:<3} {params:>9,} {tuple(out.shape)!s:>18} {err:>10.2e} {ms:>8.1f}")


if __name__ == "__main__":
    main()
