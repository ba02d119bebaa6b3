"""The training loop: ``train(cfg)`` on one process or under torchrun (DDP).

Exact resume: the sampler permutation is a function of ``(seed, epoch)``,
augmentation of ``(seed, epoch, index)``; checkpoints hold model, optimizer,
scheduler, scaler, EMA, every rank's RNG states and the position (epoch, step in
epoch, global step), so a stopped-and-resumed run replays the continuous one.
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
from typing import Any

import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch import nn

from . import distributed as D
from .build import amp_settings, build_loss, build_model, build_transform, resolve_data, seed_all, set_deterministic
from .checkpoint import atomic_save, capture_rng, export_safetensors, load_checkpoint, restore_rng, unwrap
from .config import TrainConfig, effective_lr
from .data import SafeDataset, build_loader, inspect_data, make_dataset
from .evaluate import evaluate
from .metrics import MetricsLogger, plot_metrics

__all__ = ["TrainResult", "train"]


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


def _log(dist: D.DistInfo, msg: str) -> None:
    if dist.is_main:
        print(msg, flush=True)


def train(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; see :class:`acmix.train.TrainConfig` for every setting."""
    dist = D.setup(cfg.device)
    try:
        with _StopFlag() as stop:
            return _train(cfg, dist, stop)
    finally:
        D.cleanup()


def _train(cfg: TrainConfig, dist: D.DistInfo, stop: _StopFlag) -> TrainResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    set_deterministic(cfg.deterministic)
    out = Path(cfg.output)
    device = dist.device

    # --- data and model (same init on every rank; DDP broadcasts rank 0's anyway)
    info = inspect_data(cfg.data, cfg.dataset, cfg.train_split, cfg.val_split)
    seed_all(cfg.seed)
    model = build_model(cfg, info.num_classes, info.in_chans)
    data_cfg = resolve_data(cfg, model, info)
    train_ds = SafeDataset(make_dataset(info, cfg.train_split, True, build_transform(cfg, data_cfg, True)),
                           cfg.seed, cfg.train_subset, seed_numpy=cfg.auto_augment is not None)
    val_ds = SafeDataset(make_dataset(info, cfg.val_split, False, build_transform(cfg, data_cfg, False)),
                         cfg.seed, cfg.val_subset, seed_numpy=False)
    train_loader = build_loader(train_ds, batch_size=cfg.batch_size, workers=cfg.workers, train=True,
                                rank=dist.rank, world_size=dist.world_size, seed=cfg.seed, pin_memory=cfg.pin_memory)
    val_loader = build_loader(val_ds, batch_size=cfg.batch_size, workers=cfg.workers, train=False,
                              rank=dist.rank, world_size=dist.world_size, seed=cfg.seed, pin_memory=cfg.pin_memory)
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
    loss_fn = build_loss(cfg, mixup is not None)

    # --- resume
    epoch, step_in_epoch, global_step, best = 0, 0, 0, None
    loss_carry = [0.0, 0.0]  # loss sum and sample count of the current epoch so far
    resume = cfg.resume
    if resume == "auto":
        resume = str(out / "last.pth") if (out / "last.pth").is_file() else None
    if resume:
        ckpt = load_checkpoint(resume, map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None:
            if ckpt.get("ema") is None:
                raise ValueError(f"{resume}: --model-ema is on but the checkpoint has no EMA weights")
            ema.module.load_state_dict(ckpt["ema"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        best, loss_carry = ckpt.get("best_top1"), list(ckpt.get("loss_carry", [0.0, 0.0]))
        rng = ckpt.get("rng", [])
        if len(rng) == dist.world_size:
            restore_rng(rng[dist.rank])
        else:
            _log(dist, f"resume: {len(rng)} saved RNG states for {dist.world_size} processes; reseeding")
            seed_all(cfg.seed + dist.rank + 1000 * global_step)
        _log(dist, f"resumed from {resume}: epoch {epoch}, step {step_in_epoch}/{steps_per_epoch}, "
                   f"global step {global_step}")
    else:
        seed_all(cfg.seed + dist.rank)  # per-rank dropout / drop-path streams
    scheduler.step(epoch)
    scheduler.step_update(global_step)

    ddp_model: nn.Module = model
    if dist.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    run_model = torch.compile(ddp_model) if cfg.compile else ddp_model

    resolved = {**cfg.to_dict(), "resolved": {"world_size": dist.world_size, "lr": lr, "data": data_cfg,
                                              "dataset": info.kind, "num_classes": info.num_classes,
                                              "in_chans": info.in_chans, "steps_per_epoch": steps_per_epoch,
                                              "device": str(device)}}
    logger = None
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
        logger = MetricsLogger(out, cfg.tensorboard, start_epoch=epoch)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model {cfg.model}: {n_params:,} parameters; {info.kind} data, {len(train_ds)} train / "
              f"{len(val_ds)} val images; {dist.world_size} process(es) on {device}; global batch "
              f"{cfg.batch_size * cfg.grad_accum * dist.world_size}, lr {lr:.3g}; output {out}", flush=True)

    def save(name: str) -> None:
        rng = D.all_gather_objects(capture_rng())
        if not dist.is_main:
            return
        state = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                 "ema": ema.module.state_dict() if ema is not None else None, "rng": rng, "epoch": epoch,
                 "step_in_epoch": step_in_epoch, "global_step": global_step, "best_top1": best,
                 "loss_carry": loss_carry, "config": json.loads(json.dumps(resolved, default=str))}
        atomic_save(state, out / name)

    last_eval: dict[str, Any] = {}
    interrupted: str | None = None
    progress = dist.is_main and sys.stderr.isatty()
    while epoch < cfg.epochs and interrupted is None:
        train_ds.set_epoch(epoch)
        sampler = train_loader.sampler
        sampler.set_epoch(epoch)
        sampler.set_start(step_in_epoch * cfg.grad_accum * cfg.batch_size)
        train_loader.generator.manual_seed(cfg.seed * 100_003 + epoch * 1009 + step_in_epoch)
        model.train()
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       dynamic_ncols=True, leave=False)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        seen = n_imgs = 0  # since the last save / this epoch's start
        t0 = time.perf_counter()
        micro = 0
        for images, target in train_loader:
            if step_in_epoch >= steps_per_epoch:
                break
            images = images.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if mixup is not None:
                images, target = mixup(images, target)
            micro += 1
            sync = micro == cfg.grad_accum
            no_sync = getattr(ddp_model, "no_sync", None)
            with (nullcontext() if sync or no_sync is None else no_sync()), autocast():
                loss = loss_fn(run_model(images), target)
            scaled = loss / cfg.grad_accum
            (scaler.scale(scaled) if scaler else scaled).backward()
            loss_sum += loss.detach().double() * len(images)
            seen += len(images)
            n_imgs += len(images)
            if not sync:
                continue
            micro = 0
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.clip_grad is not None:
                dispatch_clip_grad(model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            global_step += 1
            step_in_epoch += 1
            if ema is not None:
                ema.update(model, step=global_step)
            scheduler.step_update(global_step)
            if bar is not None:
                bar.update()
                if step_in_epoch % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            elif dist.is_main and step_in_epoch % cfg.log_interval == 0:
                print(f"epoch {epoch + 1} step {step_in_epoch}/{steps_per_epoch} loss {loss.item():.4f} "
                      f"lr {optimizer.param_groups[0]['lr']:.3e} "
                      f"{n_imgs * dist.world_size / (time.perf_counter() - t0):.0f} img/s", flush=True)
            stop_now = stop.reason is not None
            if dist.distributed:
                stop_now = D.any_rank(stop_now, device)
            if stop_now:
                interrupted = stop.reason or "signal on another rank"
            elif cfg.max_steps and global_step >= cfg.max_steps and step_in_epoch < steps_per_epoch:
                interrupted = "max_steps"
            if interrupted or (cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0
                               and step_in_epoch < steps_per_epoch):
                loss_carry = [loss_carry[0] + float(loss_sum), loss_carry[1] + seen]
                loss_sum.zero_()
                seen = 0
                save("last.pth")
                if interrupted:
                    break
        if bar is not None:
            bar.close()
        if interrupted:
            _log(dist, f"stopped ({interrupted}) at epoch {epoch + 1}, step {step_in_epoch}/{steps_per_epoch}; "
                       f"saved {out / 'last.pth'} (continue with --resume {out / 'last.pth'})")
            break
        train_time = time.perf_counter() - t0
        totals = D.all_reduce_sum([loss_carry[0] + float(loss_sum), loss_carry[1] + seen], device)
        row: dict[str, Any] = {"epoch": epoch, "step": global_step, "lr": optimizer.param_groups[0]["lr"],
                               "train_loss": totals[0] / max(totals[1], 1), "train_seconds": train_time,
                               "train_img_per_s": n_imgs * dist.world_size / max(train_time, 1e-9)}
        epoch += 1
        step_in_epoch, loss_carry = 0, [0.0, 0.0]
        scheduler.step(epoch)
        is_best = False
        if epoch == cfg.epochs or (cfg.eval_every and epoch % cfg.eval_every == 0):
            last_eval = evaluate(model, val_loader, device, autocast=autocast, channels_last=cfg.channels_last,
                                 progress=progress, desc="val")
            row.update({f"val_{k}": v for k, v in last_eval.items() if k != "images"})
            if ema is not None:
                ema_eval = evaluate(ema.module, val_loader, device, autocast=autocast,
                                    channels_last=cfg.channels_last)
                row.update({f"ema_{k}": v for k, v in ema_eval.items() if k != "images"})
            is_best = best is None or last_eval["top1"] > best
            best = max(best or 0.0, last_eval["top1"])
        if logger is not None:
            logger.log(row)
            msg = f"epoch {epoch}/{cfg.epochs}: train_loss {row['train_loss']:.4f} ({row['train_img_per_s']:.0f} img/s)"
            if "val_top1" in row:
                msg += (f", val_loss {row['val_loss']:.4f}, top1 {row['val_top1']:.4f}, top5 {row['val_top5']:.4f} "
                        f"({row['val_img_per_s']:.0f} img/s)")
            print(msg, flush=True)
        save("last.pth")
        if is_best:
            save("best.pth")
        if cfg.max_steps and global_step >= cfg.max_steps and epoch < cfg.epochs:
            interrupted = "max_steps"

    if dist.is_main:
        if epoch == cfg.epochs:
            export_safetensors(model, out / "model.safetensors", {"model": cfg.model, "epoch": str(epoch)})
            if ema is not None:
                export_safetensors(ema.module, out / "model_ema.safetensors", {"model": cfg.model})
        if logger is not None:
            if cfg.plot and logger.rows:
                plot_metrics(logger.rows, out / "metrics.png")
            logger.close()
    return TrainResult(out, epoch, global_step, last_eval, best, interrupted)
