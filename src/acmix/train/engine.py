"""The training loop: ``train(cfg)`` on one process or under torchrun (DDP).

Read it top-down: :func:`train` builds a :class:`Run` (:func:`setup`: data,
model, optimizer; :func:`resume` puts a checkpoint's state into it), then calls
:func:`train_epoch` and :func:`end_epoch` until the schedule is done or a
signal stops it.  Everything that changes while training (position, best
accuracy, loss carried over a mid-epoch save) lives on the :class:`Run`.  The
run folder (checked before any work, exported at the end) is
:mod:`acmix.train.outputs`.  A non-finite loss or weights raise
:class:`TrainingDiverged` before anything is written.

Exact resume: the sampler permutation is a function of ``(seed, epoch)``,
augmentation of ``(seed, epoch, index)``; checkpoints hold model, optimizer,
scaler, EMA, every rank's RNG states and the position (epoch, step in epoch,
global step), so a stopped-and-resumed run replays the continuous one.
See ``docs/training.md``.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, cast

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn

from . import checkpoint as C
from . import distributed as D
from .build import amp_settings, build_loss, build_model, build_transform, resolve_data, seed_all, set_deterministic
from .config import TrainConfig, effective_lr, plain_values, validate
from .data import SafeDataset, build_loader, inspect_data, make_dataset
from .evaluate import evaluate
from .metrics import MetricsLogger
from .outputs import finish, prepare_output, start_outputs
from .resume import resume

__all__ = ["Run", "TrainResult", "TrainingDiverged", "train"]

class TrainingDiverged(RuntimeError):
    """A non-finite loss or weights: the run stops and nothing is saved over the last good files."""


@dataclass
class TrainResult:
    output: Path
    epoch: int  # epochs completed
    global_step: int
    metrics: dict[str, Any] = field(default_factory=dict)  # last evaluation
    best_top1: float | None = None
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" / "max_steps" when stopped early


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves at the next optimizer step and exits."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.reason = signal.Signals(signum).name

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Run:
    """A training run: what :func:`setup` builds, and the position that changes as it trains."""

    cfg: TrainConfig
    dist: D.DistInfo
    out: Path
    model: nn.Module
    ddp_model: nn.Module  # DDP wrapper (or ``model``): has ``no_sync``
    run_model: nn.Module  # what the forward pass calls (``torch.compile``d when asked)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    autocast: Any
    ema: ModelEmaV3 | None
    mixup: Mixup | None
    loss_fn: nn.Module
    train_ds: SafeDataset
    val_ds: SafeDataset
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int
    resolved: dict[str, Any]  # config.json: the config and what was derived from it
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best: float | None = None
    loss_carry: list[float] = field(default_factory=lambda: [0.0, 0.0])  # loss sum, samples of this epoch so far
    last_eval: dict[str, Any] = field(default_factory=dict)
    epoch_time: tuple[float, int] = (0.0, 0)  # seconds and images of this process's training in the epoch
    logger: MetricsLogger | None = None

    def log(self, msg: str) -> None:
        if self.dist.is_main:
            print(msg, flush=True)

    def state(self) -> dict[str, Any]:
        """Everything a resume needs (plain containers and tensors); ``rng`` is added by :meth:`save`."""
        return {"model": C.unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.module.state_dict() if self.ema is not None else None, "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "best_top1": self.best,
                "loss_carry": self.loss_carry, "config": json.loads(json.dumps(self.resolved, default=str))}

    def check_finite(self, where: str) -> None:
        """Raise :class:`TrainingDiverged` rather than write non-finite weights over good ones."""
        modules = [("model", self.model)] + ([("EMA", self.ema.module)] if self.ema is not None else [])
        for label, module in modules:
            for name, t in C.unwrap(module).state_dict().items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise TrainingDiverged(
                        f"training diverged: {label} weight {name} is not finite at epoch {self.epoch + 1}, step "
                        f"{self.step_in_epoch} (global step {self.global_step}); {where} not written, the files in "
                        f"{self.out} keep the last good state. {self.hint()}")

    def hint(self) -> str:
        lr = self.resolved["resolved"]["lr"]
        return (f"Try a lower --lr (now {lr:.3g}), --clip-grad 1.0"
                + (", or training without --amp" if self.cfg.amp else "") + ".")

    def save(self, name: str) -> None:
        self.check_finite(name)
        rng = D.all_gather_objects(C.capture_rng())  # a collective: every rank takes part
        if self.dist.is_main:
            C.atomic_save({**self.state(), "rng": rng}, self.out / name)


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; see :class:`acmix.train.TrainConfig` for every setting."""
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    # checked as the command line checks it: built in Python, epochs=0 ended in timm's scheduler assert,
    # smoothing=2 in the loss's, and lr=nan ran until the weights diverged; Path objects are fine
    cfg = plain_values(cfg)
    validate(cfg)
    dist = D.setup(cfg.device)
    try:
        with _StopFlag() as stop:
            prepare_output(cfg, dist)
            run = setup(cfg, dist)
            if cfg.resume:
                resume(run)
            else:
                seed_all(cfg.seed + dist.rank)  # per-rank dropout / drop-path streams
            run.scheduler.step(run.epoch)
            run.scheduler.step_update(run.global_step)
            start_outputs(run)
            interrupted = None
            while run.epoch < cfg.epochs and interrupted is None:
                interrupted = train_epoch(run, stop)
                if interrupted is None:
                    end_epoch(run)
                    if cfg.max_steps and run.global_step >= cfg.max_steps and run.epoch < cfg.epochs:
                        interrupted = "max_steps"
                else:
                    run.log(f"stopped ({interrupted}) at epoch {run.epoch + 1}, step {run.step_in_epoch}/"
                            f"{run.steps_per_epoch}; saved {run.out / 'last.pth'} (continue with --resume "
                            f"{run.out / 'last.pth'})")
            finish(run)
            return TrainResult(run.out, run.epoch, run.global_step, run.last_eval, run.best, interrupted)
    finally:
        D.cleanup()


def setup(cfg: TrainConfig, dist: D.DistInfo) -> Run:
    """Data, model, optimizer, scheduler, AMP, EMA, Mixup and loss (same init on every rank)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_deterministic(cfg.deterministic)
    device = dist.device
    info = inspect_data(cfg.data, cfg.dataset, cfg.train_split, cfg.val_split)
    seed_all(cfg.seed)
    model = build_model(cfg, info.num_classes, info.in_chans)
    if cfg.init_from:
        C.load_weights(model, C.extract_state_dict(C.load_checkpoint(cfg.init_from)),
                     f"--init-from {cfg.init_from} does not match {cfg.model}")
    data_cfg = resolve_data(cfg, model, info)
    train_ds = SafeDataset(make_dataset(info, cfg.train_split, True, build_transform(cfg, data_cfg, True)),
                           cfg.seed, cfg.train_subset, seed_numpy=cfg.auto_augment is not None)
    val_ds = SafeDataset(make_dataset(info, cfg.val_split, False, build_transform(cfg, data_cfg, False)),
                         cfg.seed, cfg.val_subset, seed_numpy=False)
    loader_kw: dict[str, Any] = dict(batch_size=cfg.batch_size, workers=cfg.workers, rank=dist.rank,
                                     world_size=dist.world_size, seed=cfg.seed, pin_memory=cfg.pin_memory)
    train_loader = build_loader(train_ds, train=True, **loader_kw)
    val_loader = build_loader(val_ds, train=False, **loader_kw)
    steps_per_epoch = len(train_loader) // cfg.grad_accum
    if steps_per_epoch < 1:
        raise ValueError(f"grad_accum={cfg.grad_accum} exceeds the {len(train_loader)} batches per epoch")

    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    lr = effective_lr(cfg, dist.world_size)
    opt_kwargs: dict[str, Any] = {}
    if cfg.opt_eps is not None:
        opt_kwargs["eps"] = cfg.opt_eps
    if cfg.opt_betas is not None:
        opt_kwargs["betas"] = tuple(cfg.opt_betas)
    optimizer = create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                    momentum=cfg.momentum, **opt_kwargs)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs,
                                       warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr,
                                       min_lr=cfg.min_lr, cooldown_epochs=cfg.cooldown_epochs,
                                       step_on_epochs=not cfg.sched_on_updates, updates_per_epoch=steps_per_epoch)
    autocast, scaler = amp_settings(cfg, device)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) if cfg.model_ema else None
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                      switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.smoothing,
                      num_classes=info.num_classes)
    ddp_model: nn.Module = model
    if dist.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    resolved = {**cfg.to_dict(), "resolved": {"world_size": dist.world_size, "lr": lr, "data": data_cfg,
                                              "dataset": info.kind, "num_classes": info.num_classes,
                                              "in_chans": info.in_chans, "steps_per_epoch": steps_per_epoch,
                                              "device": str(device)}}
    compiled = cast(nn.Module, torch.compile(ddp_model)) if cfg.compile else ddp_model  # an OptimizedModule
    return Run(cfg, dist, Path(cfg.output), model, ddp_model, compiled,
               optimizer, scheduler, scaler, autocast, ema, mixup, build_loss(cfg, mixup is not None), train_ds,
               val_ds, train_loader, val_loader, steps_per_epoch, resolved)


def _optimizer_step(run: Run) -> None:
    """Unscale, clip, step, zero; then EMA and the per-update schedule."""
    cfg, optimizer, scaler = run.cfg, run.optimizer, run.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if cfg.clip_grad is not None:
        dispatch_clip_grad(run.model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    run.global_step += 1
    run.step_in_epoch += 1
    if run.ema is not None:
        run.ema.update(run.model, step=run.global_step)
    run.scheduler.step_update(run.global_step)


def train_epoch(run: Run, stop: _StopFlag) -> str | None:
    """The rest of the current epoch; returns why it stopped early (a signal, ``max_steps``) or None."""
    cfg, dist, device = run.cfg, run.dist, run.dist.device
    run.train_ds.set_epoch(run.epoch)
    sampler = run.train_loader.sampler
    sampler.set_epoch(run.epoch)
    sampler.set_start(run.step_in_epoch * cfg.grad_accum * cfg.batch_size)
    run.train_loader.generator.manual_seed(cfg.seed * 100_003 + run.epoch * 1009 + run.step_in_epoch)
    run.model.train()
    progress = dist.is_main and sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=run.steps_per_epoch, initial=run.step_in_epoch,
                   desc=f"epoch {run.epoch + 1}/{cfg.epochs}", dynamic_ncols=True, leave=False)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = n_imgs = 0  # since the last save / this epoch's start
    t0 = time.perf_counter()
    micro = 0
    interrupted: str | None = None
    no_sync = getattr(run.ddp_model, "no_sync", None)
    for images, target in run.train_loader:
        if run.step_in_epoch >= run.steps_per_epoch:
            break
        images = images.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if run.mixup is not None:
            images, target = run.mixup(images, target)
        micro += 1
        sync = micro == cfg.grad_accum
        with (nullcontext() if sync or no_sync is None else no_sync()), run.autocast():
            loss = run.loss_fn(run.run_model(images), target)
        scaled = loss / cfg.grad_accum
        (run.scaler.scale(scaled) if run.scaler else scaled).backward()
        loss_sum += loss.detach().double() * len(images)
        seen += len(images)
        n_imgs += len(images)
        if not sync:
            continue
        micro = 0
        bad = not bool(torch.isfinite(loss_sum))
        if dist.distributed:
            bad = D.any_rank(bad, device)
        if bad:
            raise TrainingDiverged(
                f"training diverged: the loss is {loss.item():.4g} at epoch {run.epoch + 1}, step "
                f"{run.step_in_epoch + 1} (global step {run.global_step + 1}); stopped without saving, the files "
                f"in {run.out} keep the last good state. {run.hint()}")
        _optimizer_step(run)
        lr = run.optimizer.param_groups[0]["lr"]
        if bar is not None:
            bar.update()
            if run.step_in_epoch % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
        elif dist.is_main and run.step_in_epoch % cfg.log_interval == 0:
            print(f"epoch {run.epoch + 1} step {run.step_in_epoch}/{run.steps_per_epoch} loss {loss.item():.4f} "
                  f"lr {lr:.3e} {n_imgs * dist.world_size / (time.perf_counter() - t0):.0f} img/s", flush=True)
        stop_now = stop.reason is not None
        if dist.distributed:
            stop_now = D.any_rank(stop_now, device)
        mid_epoch = run.step_in_epoch < run.steps_per_epoch
        if stop_now:
            interrupted = stop.reason or "signal on another rank"
        elif cfg.max_steps and run.global_step >= cfg.max_steps and mid_epoch:
            interrupted = "max_steps"
        if interrupted or (cfg.checkpoint_every and run.global_step % cfg.checkpoint_every == 0 and mid_epoch):
            run.loss_carry = [run.loss_carry[0] + float(loss_sum), run.loss_carry[1] + seen]
            loss_sum.zero_()
            seen = 0
            run.save("last.pth")
            if interrupted:
                break
    if bar is not None:
        bar.close()
    if interrupted:
        return interrupted
    run.loss_carry = [run.loss_carry[0] + float(loss_sum), run.loss_carry[1] + seen]
    run.epoch_time = (time.perf_counter() - t0, n_imgs)
    return None


def end_epoch(run: Run) -> None:
    """Close the epoch: train loss over ranks, evaluation when due, metrics row, ``last.pth`` / ``best.pth``."""
    cfg, dist, device = run.cfg, run.dist, run.dist.device
    train_time, n_imgs = run.epoch_time
    totals = D.all_reduce_sum(run.loss_carry, device)
    row: dict[str, Any] = {"epoch": run.epoch, "step": run.global_step, "lr": run.optimizer.param_groups[0]["lr"],
                           "train_loss": totals[0] / max(totals[1], 1), "train_seconds": train_time,
                           "train_img_per_s": n_imgs * dist.world_size / max(train_time, 1e-9)}
    run.epoch += 1
    run.step_in_epoch, run.loss_carry = 0, [0.0, 0.0]
    run.scheduler.step(run.epoch)
    is_best = False
    if run.epoch == cfg.epochs or (cfg.eval_every and run.epoch % cfg.eval_every == 0):
        progress = dist.is_main and sys.stderr.isatty()
        run.last_eval = evaluate(run.model, run.val_loader, device, autocast=run.autocast,
                                 channels_last=cfg.channels_last, progress=progress, desc="val")
        row.update({f"val_{k}": v for k, v in run.last_eval.items() if k != "images"})
        if run.ema is not None:
            ema_eval = evaluate(run.ema.module, run.val_loader, device, autocast=run.autocast,
                                channels_last=cfg.channels_last)
            row.update({f"ema_{k}": v for k, v in ema_eval.items() if k != "images"})
        is_best = run.best is None or run.last_eval["top1"] > run.best
        run.best = max(run.best or 0.0, run.last_eval["top1"])
    if run.logger is not None:
        run.logger.log(row)
        msg = f"epoch {run.epoch}/{cfg.epochs}: train_loss {row['train_loss']:.4f} ({row['train_img_per_s']:.0f} img/s)"
        if "val_top1" in row:
            msg += (f", val_loss {row['val_loss']:.4f}, top1 {row['val_top1']:.4f}, top5 {row['val_top5']:.4f} "
                    f"({row['val_img_per_s']:.0f} img/s)")
        print(msg, flush=True)
    run.save("last.pth")
    if is_best:
        run.save("best.pth")
