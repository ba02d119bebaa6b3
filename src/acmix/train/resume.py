"""``--resume``: put a ``last.pth`` written by :func:`acmix.train.train` back into a freshly built run.

Settings given again on resume are compared with the checkpoint's: those that
fix what a step is (model, data, batch geometry, optimizer type, seed) must be
the same, or the resume is refused; the others (learning rate, schedule,
regularisation, epochs) are applied from here on, and the log says which.  The
schedule is rebuilt from the config (it is a pure function of the step), and the
optimizer's hyperparameters are the config's, not the checkpoint's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .build import seed_all
from .checkpoint import CheckpointError, load_checkpoint, load_weights, restore_rng

if TYPE_CHECKING:
    from .engine import Run

__all__ = ["resume", "resume_path", "saved_settings"]

# must match the checkpoint: they decide the model, the data order and what a step is
FIXED = ("model", "model_kwargs", "data", "dataset", "train_split", "train_subset", "batch_size", "grad_accum",
         "opt", "seed", "model_ema")
# how to run, not what to compute: never reported
EXECUTION = ("resume", "output", "overwrite", "device", "workers", "threads", "log_interval", "tensorboard", "plot",
             "pin_memory", "max_steps", "checkpoint_every", "eval_every", "compile", "deterministic", "init_from",
             "val_subset", "val_split")
POSITION = ("model", "optimizer", "epoch", "step_in_epoch", "global_step")


def resume_path(resume: str | None, output: str) -> str | None:
    """The checkpoint ``resume`` names (``auto``: ``output/last.pth`` when it exists), or None."""
    if resume == "auto":
        last = Path(output) / "last.pth"
        return str(last) if last.is_file() else None
    return resume


def saved_settings(path: str) -> dict[str, Any]:
    """The training settings stored in the checkpoint at ``path`` (none when it has none or cannot be read),
    less the ones that say where to write and what to start from."""
    from .config import TrainConfig

    try:
        saved = load_checkpoint(path).get("config")
    except (ValueError, FileNotFoundError):
        return {}  # resume() gives the message
    if not isinstance(saved, dict):
        return {}
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"resume", "output", "overwrite", "init_from"}
    return {k: v for k, v in saved.items() if k in names}


def _show(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def _compare(path: str, saved: dict[str, Any], run: Run) -> list[str]:
    """Refuse changed :data:`FIXED` settings; return the other changes as ``name old -> new``."""
    now = json.loads(json.dumps(run.cfg.to_dict(), default=str))  # as saved: tuples become lists
    fixed = [k for k in FIXED if k in saved and saved[k] != now[k]]
    world = saved.get("resolved", {}).get("world_size", run.dist.world_size)
    if world != run.dist.world_size:
        fixed.append("world_size")
        now = {**now, "world_size": run.dist.world_size}
        saved = {**saved, "world_size": world}
    if fixed:
        changes = ", ".join(f"{k} {_show(saved[k])} -> {_show(now[k])}" for k in fixed)
        raise CheckpointError(f"cannot resume {path} with {changes}: these must match the checkpoint; resume with "
                              f"the same values, or start a new run from its weights with --init-from {path}")
    return [f"{k} {_show(saved[k])} -> {_show(now[k])}" for k in now
            if k in saved and k not in FIXED and k not in EXECUTION and saved[k] != now[k]]


def resume(run: Run) -> None:
    """Load model, optimizer, scaler, EMA, position and RNG states from ``run.cfg.resume``."""
    cfg, dist = run.cfg, run.dist
    path = resume_path(cfg.resume, cfg.output)
    if not path:
        seed_all(cfg.seed + dist.rank)
        return
    ckpt = load_checkpoint(path, map_location=dist.device)
    if Path(path).suffix == ".safetensors" or not all(k in ckpt for k in POSITION):
        raise CheckpointError(f"{path} holds model weights only (no optimizer state or position), so there is "
                              f"nothing to resume; start a new run from these weights with --init-from {path}")
    saved = ckpt.get("config")
    saved_cfg = saved if isinstance(saved, dict) else {}
    load_weights(run.model, ckpt["model"],
                 f"{path} does not match this model ({cfg.model} {cfg.model_kwargs or ''}; the checkpoint was "
                 f"written for {saved_cfg.get('model', '?')} {saved_cfg.get('model_kwargs') or ''})")
    changes = _compare(path, saved_cfg, run)
    if cfg.epochs < ckpt["epoch"]:
        raise CheckpointError(f"cannot resume {path} with epochs={cfg.epochs}: it has already done "
                              f"{ckpt['epoch']} epochs")
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in run.optimizer.param_groups]
    try:
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume {path}: its optimizer state does not fit this run's parameter groups "
                              f"(weight decay switched on or off, or another --opt?): {e}") from None
    for group, hyper in zip(run.optimizer.param_groups, fresh):
        group.update(hyper)  # the config's lr, weight decay, momentum, betas; the schedule sets lr next
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None:
        if ckpt.get("ema") is None:
            raise CheckpointError(f"{path}: --model-ema is on but the checkpoint has no EMA weights")
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
    if changes:
        run.log(f"resume: changed since the checkpoint, applied from here on: {', '.join(changes)}")

