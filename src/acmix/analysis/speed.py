"""Speed tables: the four shift implementations (paper Tab. 7) and the model family (Tab. 5).

The shift table times one :class:`acmix.ACmix` layer per shift mode at the
ResNet-50 stage shapes, forward (inference) and forward + backward, interleaved
round by round so that a busy machine slows every mode alike; each row also
gives the time relative to the grouped (default) layer.  The family table is
the model benchmark (``acmix.analysis.model_bench``) over each ACmix model and
its baseline.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Sequence
from typing import Any

import torch

from ..nn import ACmix
from ..ops.config import ShiftMode
from .timing import check_device, time_ms

__all__ = ["STAGE_SHAPES", "family_pairs", "family_speed", "pair_ratios", "shift_speed"]

STAGE_SHAPES = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-50's 3x3 layers: channels, size
SHIFT_MODES = tuple(m.value for m in ShiftMode)


def shift_speed(*, shapes: Sequence[tuple[int, int]] = STAGE_SHAPES, modes: Sequence[str] = SHIFT_MODES,
                batch: int = 8, rounds: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32,
                seed: int = 0) -> list[dict[str, Any]]:
    """One row per (shape, mode): median forward and forward+backward ms, images/s, ratio to ``grouped``."""
    dev = check_device(device)
    rows = []
    for c, hw in shapes:
        torch.manual_seed(seed)
        layers = {m: ACmix(c, c, shift=m, device=dev, dtype=dtype) for m in modes}
        x = torch.randn(batch, c, hw, hw, device=dev, dtype=dtype, requires_grad=True)
        times: dict[str, dict[str, list[float]]] = {m: {"fwd": [], "fwd_bwd": []} for m in modes}
        for r in range(rounds + 1):  # round 0 warms up
            for m in [*modes[r % len(modes):], *modes[: r % len(modes)]]:
                for kind in ("fwd", "fwd_bwd"):
                    ms = time_ms(functools.partial(_step, layers[m], x, kind), dev)
                    if r:
                        times[m][kind].append(ms)
        med = {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}
        base = med.get("grouped")
        for m in modes:
            row = {"channels": c, "size": hw, "batch": batch, "shift": m, "fwd_ms": med[m]["fwd"],
                   "fwd_bwd_ms": med[m]["fwd_bwd"], "infer_img_s": batch / med[m]["fwd"] * 1e3}
            if base:
                row["fwd_vs_grouped"] = med[m]["fwd"] / base["fwd"]
                row["fwd_bwd_vs_grouped"] = med[m]["fwd_bwd"] / base["fwd_bwd"]
            rows.append(row)
    return rows


def _step(layer: ACmix, x: torch.Tensor, kind: str) -> None:
    if kind == "fwd":
        with torch.no_grad():
            layer(x)
    else:
        layer(x).sum().backward()


def family_speed(names: Sequence[str] | None = None, **bench_kwargs: Any) -> list[dict[str, Any]]:
    """The model benchmark over ``names`` (default: every family's models, as ``acmix bench-models``)."""
    from .model_bench import FAMILIES, bench_models

    if names is None:
        names = list(dict.fromkeys(n for family in FAMILIES.values() for n in family))
    return bench_models(list(names), **bench_kwargs)


def family_pairs() -> list[tuple[str, str]]:
    """(ACmix model, baseline or reference) for every family of the model benchmark."""
    from .model_bench import FAMILIES

    return [(models[-1], other) for models in FAMILIES.values() for other in models[:-1]]


def pair_ratios(rows: Sequence[dict[str, Any]], pairs: Sequence[tuple[str, str]] | None = None
                ) -> list[dict[str, Any]]:
    """Per (ACmix model, baseline, mode) measured: throughput of each and their ratio (default :func:`family_pairs`)."""
    speed = {(r["model"], r["mode"]): r["img_s"] for r in rows}
    out = []
    for model, base in family_pairs() if pairs is None else pairs:
        for mode in dict.fromkeys(r["mode"] for r in rows):
            if (model, mode) in speed and (base, mode) in speed:
                out.append({"model": model, "baseline": base, "mode": mode, "img_s": speed[model, mode],
                            "baseline_img_s": speed[base, mode],
                            "speed_vs_baseline": speed[model, mode] / speed[base, mode]})
    return out
