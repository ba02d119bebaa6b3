"""Stage I / Stage II MACs and params of the ACmix layers of any family, measured from a forward pass.

For every module that mixes the two paths (it holds ``rate1``/``rate2``) the
MACs of one forward pass are split by which weights an operation uses: the
input projections (children ``conv1``/``conv2``/``conv3``, ``qkv``, ``q``,
``kv`` and PVT's spatial reduction ``sr``: Stage I), the convolution path
(``fc``, ``dep_conv`` or ``shift_weight``), the output projection (``proj``,
Swin and PVT) and everything else in the module (the attention: logits,
weights, aggregation, position terms; plus the module's ``uncounted_macs``).
Self-attention is the same layer without its convolution path, so its split is
read off the same pass.  MACs come from PyTorch's FLOP formulas (matmuls and
convolutions) on the reference backend.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from ..ops.functional import Backend, use_backend

__all__ = ["GROUPS", "family_stage_costs"]

_SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu}
GROUPS = {"stage1": ("conv1", "conv2", "conv3", "qkv", "q", "kv", "sr"), "conv_path": ("fc", "dep_conv"),
          "out_proj": ("proj",)}


class _Attribute(TorchDispatchMode):
    """MACs of each matmul/convolution, booked to (mixer, group) by the weights it reads."""

    def __init__(self, owners: dict[int, tuple[str, str]]) -> None:
        super().__init__()
        self.owners = owners
        self.current: list[str] = []
        self.macs: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = flop_registry.get(packet)
        if self.current and (formula is not None or packet in _SDPA_CPU):
            if formula is not None:
                macs = formula(*args, **kwargs, out_val=out) // 2
            else:  # q @ k^T and weights @ v, which PyTorch's formulas leave out on CPU
                (b, h, lq, e), s, ev = args[0].shape, args[1].shape[-2], args[2].shape[-1]
                macs = b * h * lq * s * (e + ev)
            owner = None
            for t in tree_flatten((args, kwargs))[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() in self.owners:
                    owner = self.owners[t.untyped_storage().data_ptr()]
                    break
            mixer, group = owner if owner is not None and owner[0] == self.current[-1] else (self.current[-1],
                                                                                              "attention")
            self.macs[mixer][group] += macs
        return out


def _group_of(param_name: str) -> str:
    head = param_name.split(".")[0]
    if head == "shift_weight":
        return "conv_path"
    return next((g for g, names in GROUPS.items() if head in names), "attention")


@torch.no_grad()
def family_stage_costs(model: nn.Module, input_size: Sequence[int]) -> list[dict[str, Any]]:
    """One row per mixing module (``rate1``/``rate2``) and a ``total`` row: MACs and params by group.

    Groups: ``stage1`` (input projections), ``attention`` (the rest of the attention path),
    ``conv_path``, ``out_proj``; shares: ``acmix_stage1_share`` = stage1 / (stage1 + attention +
    conv_path) and ``attention_stage1_share`` = stage1 / (stage1 + attention), output projection
    left out of both (it follows the mixing and is not part of the paper's two stages).
    """
    mixers = {n: m for n, m in model.named_modules() if hasattr(m, "rate1") and hasattr(m, "rate2")}
    if not mixers:
        raise ValueError(f"{type(model).__name__} has no ACmix layers (modules with rate1/rate2)")
    owners: dict[int, tuple[str, str]] = {}
    params: dict[str, dict[str, int]] = {n: defaultdict(int) for n in mixers}
    for name, mixer in mixers.items():
        for pname, p in mixer.named_parameters():
            group = _group_of(pname)
            params[name][group] += p.numel()
            owners[p.untyped_storage().data_ptr()] = (name, group)
        buf = getattr(mixer, "shift_weight", None)
        if isinstance(buf, torch.Tensor) and not isinstance(buf, nn.Parameter):
            owners[buf.untyped_storage().data_ptr()] = (name, "conv_path")
    mode = _Attribute(owners)
    extra: dict[str, int] = defaultdict(int)

    def enter(name: str):
        return lambda module, inputs: mode.current.append(name)

    def leave(name: str):
        def hook(module, inputs, output) -> None:
            mode.current.pop()
            if hasattr(module, "uncounted_macs"):
                extra[name] += int(module.uncounted_macs(inputs, output))
        return hook

    handles = [h for n, m in mixers.items()
               for h in (m.register_forward_pre_hook(enter(n)), m.register_forward_hook(leave(n)))]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.zeros(1, *input_size, device=p.device, dtype=p.dtype)
        with use_backend(Backend.REFERENCE), mode:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    rows = [_row(name, mode.macs[name], extra[name], params[name]) for name in mixers]
    total = {"layer": "total", **{k: sum(r[k] for r in rows) for k in rows[0] if k != "layer" and "share" not in k}}
    rows.append({**total, **_shares(total)})
    return rows


def _row(name: str, macs: dict[str, int], extra: int, params: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = {"layer": name}
    for group in ("stage1", "attention", "conv_path", "out_proj"):
        row[f"{group}_macs"] = macs.get(group, 0) + (extra if group == "attention" else 0)
    for group in ("stage1", "attention", "conv_path", "out_proj"):
        row[f"{group}_params"] = params.get(group, 0)
    return {**row, **_shares(row)}


def _shares(row: dict[str, Any]) -> dict[str, float]:
    s1, att, conv = row["stage1_macs"], row["attention_macs"], row["conv_path_macs"]
    return {"attention_stage1_share": s1 / max(s1 + att, 1), "acmix_stage1_share": s1 / max(s1 + att + conv, 1)}
