"""Shared test helpers: the configuration grid and random weights."""

from __future__ import annotations

import torch

from acmix import ACmix

# Grid of layer options used by every exactness test (foundation and fast paths).
# Each entry: (in_ch, out_ch, heads, kernel_att, kernel_conv, stride, dilation, extra kwargs).
GRID = [
    (5, 8, 4, 7, 3, 1, 1, {}),
    (5, 8, 4, 7, 3, 2, 1, {}),
    (3, 4, 1, 3, 3, 1, 1, {}),
    (3, 4, 1, 3, 1, 2, 1, {}),
    (6, 8, 4, 3, 5, 1, 2, {}),
    (6, 8, 4, 7, 5, 2, 2, {}),
    (4, 8, 4, 7, 3, 1, 1, {"position_encoding": False}),
    (4, 8, 4, 3, 3, 2, 1, {"conv_bias": True}),
    (4, 8, 4, 7, 3, 1, 1, {"combination": "fixed", "rates": (0.3, 1.7)}),
    (4, 8, 4, 7, 3, 2, 1, {"combination": "attention"}),
    (4, 8, 4, 3, 3, 1, 2, {"combination": "conv"}),
    (4, 8, 2, 3, 3, 1, 1, {"shift": "tensor"}),
    (4, 8, 2, 3, 3, 2, 1, {"shift": "fixed", "conv_bias": True}),
    (4, 8, 2, 7, 5, 1, 1, {"shift": "learnable"}),
    (4, 8, 4, 3, 1, 2, 1, {"shift": "learnable", "conv_bias": True}),
]
SIZES = [(9, 9), (8, 11), (12, 7)]
BATCHES = [1, 3]


def grid_ids() -> list[str]:
    out = []
    for ci, co, h, ka, kc, s, d, kw in GRID:
        extra = ",".join(f"{k}={v}" for k, v in kw.items())
        out.append(f"c{ci}-{co}_h{h}_ka{ka}_kc{kc}_s{s}_d{d}" + (f"_{extra}" if extra else ""))
    return out


def make_layer(entry, *, dtype=torch.float64, device="cpu", seed=0, **over) -> ACmix:
    ci, co, heads, ka, kc, s, d, kw = entry
    layer = ACmix(ci, co, heads=heads, kernel_att=ka, kernel_conv=kc, stride=s, dilation=d,
                  device=device, dtype=dtype, **{**kw, **over})
    randomize_(layer, seed)
    return layer


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values for every parameter (rates included), so no init symmetry hides a bug."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.5)
    return module


def cases():
    """(entry, size, batch) triples, each size and batch met by every entry."""
    for i, entry in enumerate(GRID):
        size = SIZES[i % len(SIZES)]
        batch = BATCHES[i % len(BATCHES)]
        yield entry, size, batch


CASES = list(cases())
CASE_IDS = [f"{gid}_{h}x{w}_b{b}" for gid, (_, (h, w), b) in zip(grid_ids(), CASES)]

def input_gradient(model: torch.nn.Module, height: int, width: int) -> torch.Tensor:
    """``(H, W)``: how much each input pixel moves the output (|d sum(out^2) / dx| over channels)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, height, width, requires_grad=True)
    model(x).square().sum().backward()
    return x.grad.abs().sum(1)[0]


__all__ = ["CASES", "CASE_IDS", "GRID", "input_gradient", "make_layer", "randomize_"]
