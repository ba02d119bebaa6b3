"""Stage I / Stage II costs of convolution, self-attention and ACmix (paper Tab. 1).

Stage I is the projection (a k x k convolution is k*k 1x1 convolutions; self-
attention and ACmix project q, k, v with three 1x1 convolutions); Stage II is
the aggregation (shift-and-sum; window attention; ACmix's attention plus its
light ``fc`` and group convolution).  The counts are analytic, per layer shape,
and count the Stage-II attention (window logits and the weighted sum of values)
that FLOP counters miss; the relative position encoding is left out, as in the
paper.  Conventions (the library's, see ``docs/operator.md``): q, k, v are
projected at input resolution and a strided layer subsamples its queries, so
Stage II runs at output resolution; a strided convolution's Stage I is counted
at output positions (what a convolution computes).

``measure_time_share`` times the same split on the current device: Stage I as
the one 1x1 projection convolution, the whole layer as the library's forward.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..nn import ACmix
from ..nn.parts import FactoryKwargs
from .timing import check_device, time_ms

__all__ = ["OPERATORS", "Layer", "layer_costs", "measure_time_share", "model_layers", "resnet50_layers",
           "stage_table", "total_costs"]

OPERATORS = ("convolution", "self-attention", "acmix")


@dataclass(frozen=True)
class Layer:
    """One layer shape: ``count`` layers of ``c_in -> c_out`` on ``height x width`` inputs."""

    name: str
    c_in: int
    c_out: int
    height: int
    width: int
    stride: int = 1
    heads: int = 4
    kernel_att: int = 7
    kernel_conv: int = 3
    count: int = 1

    @property
    def pixels_in(self) -> int:
        return self.height * self.width

    @property
    def pixels_out(self) -> int:
        return ((self.height - 1) // self.stride + 1) * ((self.width - 1) // self.stride + 1)


def resnet50_layers(img_size: int = 224) -> list[Layer]:
    """The 16 3x3 layers of ResNet-50's bottlenecks (widths 64-512, depths 3-4-6-3), grouped by shape.

    The first block of stages 2-4 strides in its 3x3 layer (torchvision's v1.5, the authors' ResNet).
    """
    hw = img_size // 4  # after the 7x7/2 stem and the 3x3/2 max pool
    layers = []
    for i, (width, depth) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        if i == 0:
            layers.append(Layer(f"stage{i + 1}", width, width, hw, hw, count=depth))
            continue
        layers.append(Layer(f"stage{i + 1}.0 (stride 2)", width, width, hw, hw, stride=2))
        hw = (hw - 1) // 2 + 1
        layers.append(Layer(f"stage{i + 1}", width, width, hw, hw, count=depth - 1))
    return layers


def model_layers(model: nn.Module, input_size: Sequence[int]) -> list[Layer]:
    """The shapes every :class:`acmix.ACmix` layer of ``model`` sees on a ``(1, *input_size)`` input."""
    found: list[Layer] = []

    def hook(name: str) -> Callable[..., None]:
        def record(module: ACmix, inputs: tuple[Tensor, ...]) -> None:
            c = module.config
            _, _, h, w = inputs[0].shape
            found.append(Layer(name, c.in_channels, c.out_channels, h, w, c.stride, c.heads, c.kernel_att,
                               c.kernel_conv))
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, ACmix)]
    if not handles:
        raise ValueError(f"{type(model).__name__} has no ResNet-form ACmix layers (acmix.ACmix); the analytic "
                         f"split covers the sliding-window layer")
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, *input_size, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return found


def layer_costs(layer: Layer, *, strided_attention: str = "subsample") -> dict[str, dict[str, int]]:
    """``{operator: {stage1_params, stage1_macs, stage2_params, stage2_macs}}`` for ``layer.count`` layers.

    Batch 1; biases of the projections included; the position encoding excluded.
    ``strided_attention``: ``"subsample"`` (this library: a strided layer attends from the
    subsampled queries only) or ``"pool"`` (SASA's ResNet: attend at input resolution, then
    pool), which changes the Stage-II attention of strided layers by the square of the stride.
    """
    if strided_attention not in ("subsample", "pool"):
        raise ValueError(f"strided_attention must be 'subsample' or 'pool', got {strided_attention!r}")
    ci, co, k, ka, n = layer.c_in, layer.c_out, layer.kernel_conv, layer.kernel_att, layer.heads
    pin, pout = layer.pixels_in, layer.pixels_out
    k2 = k * k
    proj_params, proj_macs = 3 * ci * co + 3 * co, 3 * ci * co * pin
    # q . k over the window and softmax . v, at the query positions
    attention_macs = 2 * ka * ka * co * (pout if strided_attention == "subsample" else pin)
    costs = {
        "convolution": (k2 * ci * co, k2 * ci * co * pout, 0, k2 * co * pout),
        "self-attention": (proj_params, proj_macs, 0, attention_macs),
        "acmix": (proj_params, proj_macs, 3 * n * k2 + co * k2 * k2 + 2,
                  attention_macs + 3 * n * k2 * (co // n) * pin + co * k2 * k2 * pout),
    }
    keys = ("stage1_params", "stage1_macs", "stage2_params", "stage2_macs")
    return {op: {key: v * layer.count for key, v in zip(keys, values)} for op, values in costs.items()}


def total_costs(layers: Sequence[Layer], *, strided_attention: str = "subsample") -> dict[str, dict[str, float]]:
    """:func:`layer_costs` summed over ``layers``, with ``stage1_mac_share`` and ``stage1_param_share``."""
    totals: dict[str, dict[str, float]] = {}
    for layer in layers:
        for op, costs in layer_costs(layer, strided_attention=strided_attention).items():
            acc = totals.setdefault(op, dict.fromkeys(costs, 0))
            for key, v in costs.items():
                acc[key] += v
    for acc in totals.values():
        acc["stage1_mac_share"] = acc["stage1_macs"] / (acc["stage1_macs"] + acc["stage2_macs"])
        acc["stage1_param_share"] = acc["stage1_params"] / (acc["stage1_params"] + acc["stage2_params"])
    return totals


def stage_table(layers: Sequence[Layer], time_shares: dict[str, dict[str, float]] | None = None, *,
                strided_attention: str = "subsample") -> list[dict[str, Any]]:
    """Rows for the report: per layer shape and operator, then the totals (``layer = 'total'``)."""
    rows = []
    for layer in layers:
        for op, c in total_costs([layer], strided_attention=strided_attention).items():
            rows.append({"layer": layer.name, "count": layer.count, "shape": _shape(layer), "operator": op,
                         **_rounded(c), **({} if time_shares is None else
                                           {"stage1_time_share": time_shares.get(layer.name, {}).get(op)})})
    for op, c in total_costs(layers, strided_attention=strided_attention).items():
        row = {"layer": "total", "count": sum(x.count for x in layers), "shape": "", "operator": op, **_rounded(c)}
        if time_shares is not None:
            row["stage1_time_share"] = time_shares.get("total", {}).get(op)
        rows.append(row)
    return rows


def _shape(layer: Layer) -> str:
    s = f"{layer.c_in}->{layer.c_out} @{layer.height}x{layer.width}"
    return s + (f" /{layer.stride}" if layer.stride > 1 else "")


def _rounded(c: dict[str, float]) -> dict[str, Any]:
    return {"stage1_params": int(c["stage1_params"]), "stage2_params": int(c["stage2_params"]),
            "stage1_mmacs": c["stage1_macs"] / 1e6, "stage2_mmacs": c["stage2_macs"] / 1e6,
            "stage1_mac_share": c["stage1_mac_share"], "stage1_param_share": c["stage1_param_share"]}


# ------------------------------------------------------------------------------------------ timing
def _shift_sum(y: Tensor, k: int, stride: int, out_hw: tuple[int, int]) -> Tensor:
    """Convolution's Stage II: the k*k shifted projections summed, ``(B, k*k, C, H, W) -> (B, C, Ho, Wo)``."""
    pad = k // 2
    y = F.pad(y.flatten(1, 2), (pad, pad, pad, pad)).unflatten(1, (k * k, -1))
    ho, wo = out_hw
    out = None
    for t in range(k * k):
        dy, dx = divmod(t, k)
        piece = y[:, t, :, dy: dy + stride * (ho - 1) + 1: stride, dx: dx + stride * (wo - 1) + 1: stride]
        out = piece.clone() if out is None else out.add_(piece)
    assert out is not None  # k >= 1 pieces
    return out


def _median_ms(fn: Callable[[], Any], rounds: int, device: torch.device) -> float:
    fn()  # warm-up
    return statistics.median(time_ms(fn, device) for _ in range(rounds))


@torch.no_grad()
def measure_time_share(layers: Sequence[Layer], *, batch: int = 8, rounds: int = 5, device: str = "cpu",
                       dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, dict[str, float]]:
    """Measured Stage-I share of forward time per layer shape and operator, plus ``'total'`` (count-weighted).

    Convolution: Stage I is the 1x1 projection to ``k*k*C_out`` channels, Stage II the shift-and-sum.
    Self-attention and ACmix: Stage I is one 1x1 convolution to ``3*C_out``; the whole layer is
    :class:`acmix.ACmix` (``combination='attention'`` for self-attention) on the default backend.
    """
    dev = check_device(device)
    dd: FactoryKwargs = {"device": dev, "dtype": dtype}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shares: dict[str, dict[str, float]] = {}
    sums: dict[str, list[float]] = {op: [0.0, 0.0] for op in OPERATORS}
    for layer in layers:
        x = torch.randn(batch, layer.c_in, layer.height, layer.width, generator=gen).to(**dd)
        shares[layer.name] = {}
        for op, (t1, full) in _layer_times(layer, x, rounds, dev).items():
            shares[layer.name][op] = min(t1 / full, 1.0)
            sums[op][0] += t1 * layer.count
            sums[op][1] += max(full, t1) * layer.count
    shares["total"] = {op: t1 / full for op, (t1, full) in sums.items()}
    return shares


def _layer_times(layer: Layer, x: Tensor, rounds: int, dev: torch.device) -> dict[str, tuple[float, float]]:
    """``{operator: (Stage I ms, whole layer ms)}`` on ``x``."""
    dd: FactoryKwargs = {"device": x.device, "dtype": x.dtype}
    k, s = layer.kernel_conv, layer.stride
    out_hw = ((layer.height - 1) // s + 1, (layer.width - 1) // s + 1)
    proj_conv = nn.Conv2d(layer.c_in, k * k * layer.c_out, 1, bias=False, **dd)
    proj_qkv = nn.Conv2d(layer.c_in, 3 * layer.c_out, 1, **dd)
    y = proj_conv(x).unflatten(1, (k * k, layer.c_out))
    t1_conv = _median_ms(lambda: proj_conv(x), rounds, dev)
    t2_conv = _median_ms(lambda: _shift_sum(y, k, s, out_hw), rounds, dev)
    t1_qkv = _median_ms(lambda: proj_qkv(x), rounds, dev)
    times = {"convolution": (t1_conv, t1_conv + t2_conv)}
    for op, combination in (("self-attention", "attention"), ("acmix", "learned")):
        mod = ACmix(layer.c_in, layer.c_out, kernel_att=layer.kernel_att, heads=layer.heads, kernel_conv=k,
                    stride=s, combination=combination, **dd)
        times[op] = (t1_qkv, _median_ms(functools.partial(mod, x), rounds, dev))
    return times
