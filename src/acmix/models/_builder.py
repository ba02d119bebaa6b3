"""Helpers shared by the model families: the timm interface pieces they all write the same way.

Checkpoint files (reading, unwrapping, writing) are :mod:`acmix.checkpoint_io`'s,
shared with training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ._checks import classifier_args

__all__ = ["fill_missing", "no_weight_decay_names", "reset_linear_head"]

RATE_NAMES = ("rate1", "rate2")


def no_weight_decay_names(model: nn.Module, names: tuple[str, ...] = ()) -> set[str]:
    """timm's ``no_weight_decay``: the qualified names of the ACmix rates (``rate1``, ``rate2``) and
    of every other parameter whose own name (the last component) is in ``names``.

    The rates mix the two paths; decaying them would pull both towards zero
    (timm's optimizer factory already skips every other 1-D parameter).
    """
    leaves = RATE_NAMES + names
    return {n for n, _ in model.named_parameters() if n.rpartition(".")[2] in leaves}


def reset_linear_head(model: Any, num_classes: int, global_pool: str | None, pools: tuple[str, ...],
                      like: Tensor) -> nn.Module:
    """timm's ``reset_classifier`` for a linear head: check and set ``model.global_pool`` (one of
    ``pools``), set ``model.num_classes``, and return the new head on ``like``'s device and dtype."""
    num_classes, pool = classifier_args(model, num_classes, global_pool, pools)
    if pool is not None:
        model.global_pool = pool
    model.num_classes = num_classes
    if num_classes <= 0:
        return nn.Identity()
    return nn.Linear(model.num_features, num_classes, device=like.device, dtype=like.dtype)


def fill_missing(state_dict: dict[str, Tensor], model: torch.nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    """Add the model's own (initial) tensors for missing keys ending in one of ``suffixes``.

    Used to initialise an ACmix model from weights of its baseline: only the
    ACmix extras may be missing, they keep their initialisation (shift init,
    rates 0.5), and everything else still loads strictly.  Returns the filled keys.
    """
    filled = []
    for k, v in model.state_dict().items():
        if k not in state_dict and k.endswith(suffixes):
            state_dict[k] = v.detach().clone()
            filled.append(k)
    return filled
