"""Evaluation: top-1 / top-5 / loss / images per second, sharded over ranks and summed."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .distributed import all_reduce_sum
from .metrics import topk_correct

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *,
             autocast: Callable[[], Any] | None = None, channels_last: bool = False,
             progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Metrics over the whole split (each rank evaluates its shard; sums are all-reduced)."""
    was_training = model.training
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(total=len(loader), desc=desc, leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    for images, target in loader:
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            logits = model(images)
        logits = logits.float()
        hit1, hit5 = topk_correct(logits, target, (1, 5))
        sums += torch.tensor([float(loss_fn(logits, target)), hit1, hit5, len(target)],
                             dtype=torch.float64, device=device)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    loss, top1, top5, count = all_reduce_sum(sums.tolist(), device)
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluation split is empty")
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "images": int(count),
            "img_per_s": count / max(seconds, 1e-9), "seconds": seconds}
