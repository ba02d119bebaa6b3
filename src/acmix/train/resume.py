"""``--resume``: put a ``last.pth`` written by :func:`acmix.train.train` back into a freshly built run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .build import seed_all
from .checkpoint import load_checkpoint, restore_rng

if TYPE_CHECKING:
    from .engine import Run

__all__ = ["resume"]


def resume(run: Run) -> None:
    """Load model, optimizer, scheduler, scaler, EMA, position and RNG states from ``run.cfg.resume``."""
    cfg, dist = run.cfg, run.dist
    path = cfg.resume
    if path == "auto":
        path = str(run.out / "last.pth") if (run.out / "last.pth").is_file() else None
    if not path:
        seed_all(cfg.seed + dist.rank)
        return
    ckpt = load_checkpoint(path, map_location=dist.device)
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None:
        if ckpt.get("ema") is None:
            raise ValueError(f"{path}: --model-ema is on but the checkpoint has no EMA weights")
        run.ema.module.load_state_dict(ckpt["ema"])
    run.epoch, run.step_in_epoch, run.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
    run.best, run.loss_carry = ckpt.get("best_top1"), list(ckpt.get("loss_carry", [0.0, 0.0]))
    rng = ckpt.get("rng", [])
    if len(rng) == dist.world_size:
        restore_rng(rng[dist.rank])
    else:
        run.log(f"resume: {len(rng)} saved RNG states for {dist.world_size} processes; reseeding")
        seed_all(cfg.seed + dist.rank + 1000 * run.global_step)
    run.log(f"resumed from {path}: epoch {run.epoch}, step {run.step_in_epoch}/{run.steps_per_epoch}, "
            f"global step {run.global_step}")
