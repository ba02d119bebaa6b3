"""The run folder: checked before any work, written as training goes, closed at the end.

:func:`prepare_output` refuses to start a fresh run over a previous one (unless
``overwrite``), checks the folder is writable and removes temporary files of
killed saves; :func:`finish` exports the final weights only when they are finite.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from . import checkpoint as C
from . import distributed as D
from .config import TrainConfig
from .metrics import MetricsLogger, plot_metrics

if TYPE_CHECKING:
    from .engine import Run

__all__ = ["RUN_FILES", "finish", "prepare_output", "start_outputs"]

RUN_FILES = ("last.pth", "best.pth", "model.safetensors", "model_ema.safetensors", "config.json", "metrics.jsonl",
             "metrics.csv", "metrics.png")


def prepare_output(cfg: TrainConfig, dist: D.DistInfo) -> None:
    """Before any work: the output folder is writable, holds no other run (unless ``overwrite``), no stale temps."""
    out = Path(cfg.output)
    resuming = cfg.resume not in (None, "auto") or (cfg.resume == "auto" and (out / "last.pth").is_file())
    previous = [name for name in RUN_FILES if (out / name).exists()]
    if previous and not resuming and not cfg.overwrite:
        raise ValueError(f"output folder {out} holds a previous run ({', '.join(previous[:4])}); continue it with "
                         f"--resume auto, or pass --overwrite to replace it (or choose another --output)")
    if not dist.is_main:
        return
    C.check_writable(out)
    if previous and not resuming:  # --overwrite: no file of the old run may pass for this one's
        for name in previous:
            (out / name).unlink()
    stale = C.remove_stale_temps(out, RUN_FILES)
    if stale:
        print(f"removed {len(stale)} temporary file(s) left by an interrupted save in {out}", flush=True)


def start_outputs(run: Run) -> None:
    """``config.json``, the metrics logger (truncated to the resumed epoch) and the first log line."""
    if not run.dist.is_main:
        return
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "config.json").write_text(json.dumps(run.resolved, indent=2, default=str) + "\n")
    run.logger = MetricsLogger(run.out, run.cfg.tensorboard, start_epoch=run.epoch)
    n_params = sum(p.numel() for p in run.model.parameters())
    res, cfg = run.resolved["resolved"], run.cfg
    print(f"model {cfg.model}: {n_params:,} parameters; {res['dataset']} data, {len(run.train_ds)} train / "
          f"{len(run.val_ds)} val images; {run.dist.world_size} process(es) on {run.dist.device}; global batch "
          f"{cfg.batch_size * cfg.grad_accum * run.dist.world_size}, lr {res['lr']:.3g}; output {run.out}",
          flush=True)


def finish(run: Run) -> None:
    """At the end of the schedule: the safetensors exports; always: the plot, the logger closed."""
    if not run.dist.is_main:
        return
    cfg = run.cfg
    if run.epoch == cfg.epochs:
        run.check_finite("model.safetensors")
        C.export_safetensors(run.model, run.out / "model.safetensors", {"model": cfg.model, "epoch": str(run.epoch)})
        if run.ema is not None:
            C.export_safetensors(run.ema.module, run.out / "model_ema.safetensors", {"model": cfg.model})
    if run.logger is not None:
        if cfg.plot and run.logger.rows:
            plot_metrics(run.logger.rows, run.out / "metrics.png")
        run.logger.close()
