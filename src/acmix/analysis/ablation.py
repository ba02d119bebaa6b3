"""The combination and shift ablations (paper Tab. 6 and Tab. 7) on real data, with seeds.

Every variant trains the same small ACmix network (``acmix_resnet_tiny``) with
the same recipe, budget and data; only the layer's switches change.  Each
(variant, seed) is its own run folder under ``OUT/runs/`` with ``result.json``
written when it finishes: finished runs are skipped, interrupted ones resume
from their ``last.pth``.  Runs go seed by seed, so a partial sweep already
compares every variant.  The ``grouped`` shift variant *is* the ``learned``
combination variant (the layer's defaults): it is reported in both tables
from the same runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm

from .macs import count_macs
from .rates import extract_rates, write_rates
from .report import pyplot, write_table

__all__ = ["DEFAULT_RECIPE", "MODEL", "QUICK_RECIPE", "VARIANTS", "run_ablation", "summarize", "verdicts",
           "write_report"]

MODEL = "acmix_resnet_tiny"  # takes the combination= and shift= switches of every ACmix layer
# name -> (table, combination, shift); "grouped" shares the "learned" runs
VARIANTS: dict[str, tuple[str, str, str]] = {
    "learned": ("combination", "learned", "grouped"),
    "fixed": ("combination", "fixed", "grouped"),
    "attention": ("combination", "attention", "grouped"),
    "conv": ("combination", "conv", "grouped"),
    "tensor": ("shift", "learned", "tensor"),
    "fixed_kernel": ("shift", "learned", "fixed"),
    "learnable": ("shift", "learned", "learnable"),
    "grouped": ("shift", "learned", "grouped"),
}
SAME_RUNS = {"grouped": "learned"}
LABELS = {"learned": "learned a/b", "fixed": "fixed 0.5/0.5", "attention": "attention only", "conv": "conv only",
          "tensor": "tensor shifts", "fixed_kernel": "fixed kernels", "learnable": "learnable kernel",
          "grouped": "grouped kernels"}

# The fmnist preset's recipe, sized for 7 distinct variants x 3 seeds in <= 90 min on 2 idle CPU cores:
# the variants' measured training costs add up to 5.5 runs of the default layer, which trains at ~915 img/s
# there, so one epoch of all 21 runs is ~18 min; 3 epochs plus evaluation ~57 min (1.5x margin).
DEFAULT_RECIPE: dict[str, Any] = {
    "data": "fmnist", "epochs": 3, "batch_size": 128, "opt": "adamw", "lr": 4e-3, "weight_decay": 0.05,
    "sched": "cosine", "min_lr": 1e-5, "smoothing": 0.0, "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0,
    "workers": 0, "model_kwargs": {"widths": [16, 32, 64]}, "log_interval": 100, "plot": False,
}
QUICK_RECIPE: dict[str, Any] = {
    **DEFAULT_RECIPE, "epochs": 1, "batch_size": 16, "train_subset": 64, "val_subset": 32,
    "model_kwargs": {"widths": [4, 8, 8], "heads": 2, "kernel_att": [3, 3]}, "log_interval": 1000,
}


class _Prefixed(io.TextIOBase):
    """A stdout that prefixes every line (the training loop's epoch lines get variant, seed and ETA)."""

    def __init__(self, stream: Any, prefix: str) -> None:
        self.stream, self.prefix, self.fresh = stream, prefix, True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            self.stream.write((self.prefix if self.fresh else "") + piece)
            self.fresh = piece.endswith("\n")
        self.stream.flush()
        return len(text)


def _plan(variants: Sequence[str], seeds: int, seed0: int) -> list[tuple[str, int]]:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown ablation variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    runs = dict.fromkeys(SAME_RUNS.get(v, v) for v in variants)
    return [(v, seed0 + s) for s in range(seeds) for v in runs]


def _recipe(quick: bool, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    from ..train.config import check_keys

    check_keys(dict(overrides or {}), "--set")  # one line, not TrainConfig's TypeError at the first run
    recipe = json.loads(json.dumps(QUICK_RECIPE if quick else DEFAULT_RECIPE))
    recipe.update(overrides or {})
    return recipe


def run_ablation(out: str | Path, *, variants: Sequence[str] = tuple(VARIANTS), seeds: int = 3, seed0: int = 0,
                 quick: bool = False, overrides: Mapping[str, Any] | None = None,
                 log: Callable[[str], None] = print, train: bool = True) -> list[dict[str, Any]]:
    """Train every (variant, seed) not finished yet under ``out/runs``; the results of all finished runs.

    ``overrides``: :class:`acmix.train.TrainConfig` settings on top of the recipe (``data`` for an
    ImageFolder root, ``device``, ``threads``, ``epochs``...).  Stops early (results so far) when a run
    is interrupted.  ``train=False``: only collect the runs finished so far.
    """
    from ..train import TrainConfig
    from ..train import train as train_run

    out = Path(out)
    plan = _plan(variants, seeds, seed0)
    recipe = _recipe(quick, overrides)
    if train:
        _check_recipe(out, recipe)
    name = MODEL
    results: list[dict[str, Any]] = []
    durations: list[float] = []
    for i, (variant, seed) in enumerate(plan):
        _, combination, shift = VARIANTS[variant]
        folder = out / "runs" / variant / f"seed{seed}"
        done = folder / "result.json"
        if done.is_file():
            results.append(json.loads(done.read_text()))
            log(f"[{i + 1}/{len(plan)}] {variant} seed {seed}: done before (top-1 {results[-1]['top1']:.4f})")
            continue
        if not train:
            log(f"[{i + 1}/{len(plan)}] {variant} seed {seed}: not finished (skipped: report only)")
            continue
        left = len(plan) - i
        eta = f"ETA {_clock(statistics.mean(durations) * left)}" if durations else "ETA ?"
        prefix = f"[{i + 1}/{len(plan)} {variant} seed {seed} {eta}] "
        kwargs = {**recipe.get("model_kwargs", {}), "combination": combination, "shift": shift}
        cfg = TrainConfig(**{**recipe, "model": name, "model_kwargs": kwargs, "seed": seed,
                             "output": str(folder), "resume": "auto", "eval_every": recipe.get("epochs", 1)})
        log(prefix + f"training {LABELS[variant]} (combination={combination}, shift={shift}) -> {folder}")
        start = time.perf_counter()
        with contextlib.redirect_stdout(_Prefixed(sys.stdout, prefix)):
            res = train_run(cfg)
        durations.append(time.perf_counter() - start)
        if res.interrupted:
            log(prefix + f"interrupted ({res.interrupted}); rerun the same command to resume")
            break
        result = _result(variant, seed, cfg, res.metrics, folder)
        done.write_text(json.dumps(result, indent=2) + "\n")
        results.append(result)
        log(prefix + f"test top-1 {result['top1']:.4f} in {result['train_seconds'] / 60:.1f} min of training")
    return results


EXECUTION = ("device", "threads", "workers", "log_interval", "plot", "pin_memory")  # may change between calls


def _check_recipe(out: Path, recipe: Mapping[str, Any]) -> None:
    """``out/recipe.json`` pins the recipe: resuming or adding seeds must not mix recipes in one table."""
    path = out / "recipe.json"
    same = {k: v for k, v in recipe.items() if k not in EXECUTION}
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in set(before) | set(same) if before.get(k) != same.get(k))
        if changed:
            raise ValueError(f"{out} holds runs of another recipe (differs in {', '.join(changed)}); "
                             f"use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(same, indent=2) + "\n")


def _clock(seconds: float) -> str:
    m = math.ceil(seconds / 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m} min"


def _result(variant: str, seed: int, cfg: Any, metrics: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    from ..train.metrics import MetricsLogger

    config = json.loads((folder / "config.json").read_text())["resolved"]
    model = timm.create_model(cfg.model, num_classes=config["num_classes"], in_chans=config["in_chans"],
                              **cfg.model_kwargs)
    rows = MetricsLogger.read(folder / "metrics.jsonl")
    # a run resumed after its last epoch (stopped before result.json) evaluates nothing: use its log
    last, evals = dict(metrics), [r for r in rows if "val_top1" in r] or [{"val_top1": float("nan")}]
    result = {"variant": variant, "seed": seed, "combination": cfg.model_kwargs["combination"],
              "shift": cfg.model_kwargs["shift"], "top1": last.get("top1", evals[-1]["val_top1"]),
              "top5": last.get("top5", evals[-1].get("val_top5")),
              "params": sum(p.numel() for p in model.parameters()),
              "macs": count_macs(model, (1, *config["data"]["input_size"])),
              "train_seconds": sum(r.get("train_seconds", 0.0) for r in rows), "epochs": cfg.epochs,
              "device": config["device"], "data": cfg.data, "model": cfg.model}
    if (folder / "model.safetensors").is_file() and result["combination"] == "learned":
        result["rates"] = extract_rates(folder / "model.safetensors")
    return result


def summarize(results: Sequence[Mapping[str, Any]], variants: Sequence[str] = tuple(VARIANTS)
              ) -> list[dict[str, Any]]:
    """One row per variant with runs: mean and std (over seeds) of test top-1, params, MACs, training time."""
    rows = []
    for variant in variants:
        runs = [r for r in results if r["variant"] == SAME_RUNS.get(variant, variant)]
        if not runs:
            continue
        top1 = [100 * r["top1"] for r in runs]
        table, combination, shift = VARIANTS[variant]
        rows.append({"table": table, "variant": variant, "label": LABELS[variant], "combination": combination,
                     "shift": shift, "seeds": len(runs), "top1_mean": statistics.mean(top1),
                     "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                     "params": runs[0]["params"], "mmacs": runs[0]["macs"] / 1e6,
                     "train_min": statistics.mean(r["train_seconds"] for r in runs) / 60})
    return rows


CLAIMS = [  # (better, worse, the paper's claim)
    ("learned", "attention", "Tab. 6: the mixture beats attention alone"),
    ("learned", "conv", "Tab. 6: the mixture beats convolution alone"),
    ("learned", "fixed", "Tab. 6: learned alpha/beta beat fixed 0.5/0.5"),
    ("learnable", "fixed_kernel", "Tab. 7: a learnable shift kernel beats fixed shifts"),
    ("grouped", "learnable", "Tab. 7: grouped kernels beat one learnable kernel"),
]


def verdicts(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per paper claim: is the difference of means larger than the seed spread?

    The spread is the larger of the two standard deviations (top-1 over seeds); with one seed it is
    0 and the verdict only says which mean is higher.
    """
    by = {r["variant"]: r for r in summary}
    lines = []
    for better, worse, claim in CLAIMS:
        if better not in by or worse not in by:
            continue
        a, b = by[better], by[worse]
        diff, spread = a["top1_mean"] - b["top1_mean"], max(a["top1_std"], b["top1_std"])
        if diff > spread:
            verdict = "reproduced"
        elif diff < -spread:
            verdict = "not reproduced (the opposite, beyond the spread)"
        else:
            verdict = "not resolved (within the seed spread)"
        lines.append(f"{claim}: {verdict} -- {a['label']} {a['top1_mean']:.2f} vs {b['label']} "
                     f"{b['top1_mean']:.2f} (difference {diff:+.2f}, spread {spread:.2f}, "
                     f"{min(a['seeds'], b['seeds'])} seed(s))")
    return lines


def plot_summary(summary: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Bar chart of mean test top-1 with one-std error bars, one panel per table."""
    plt = pyplot()
    tables = [t for t in ("combination", "shift") if any(r["table"] == t for r in summary)]
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.8), squeeze=False)
    for ax, table in zip(axes[0], tables):
        rows = [r for r in summary if r["table"] == table]
        means = [r["top1_mean"] for r in rows]
        ax.bar(range(len(rows)), means, yerr=[r["top1_std"] for r in rows], capsize=4, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(rows)), [r["label"] for r in rows], rotation=20, ha="right", fontsize=8)
        low = min(m - r["top1_std"] for m, r in zip(means, rows))
        high = max(m + r["top1_std"] for m, r in zip(means, rows))
        ax.set_ylim(max(0.0, low - (high - low + 1) * 0.6), min(100.0, high + (high - low + 1) * 0.3))
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(f"{'Tab. 6' if table == 'combination' else 'Tab. 7'}: {table}")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(results: Sequence[Mapping[str, Any]], out: str | Path, *, variants: Sequence[str] = tuple(VARIANTS),
                 meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """``ablation.{md,csv,json,png}``, ``ablation_runs.*`` and, for the learned variant, ``rates.*``."""
    out = Path(out)
    summary = summarize(results, variants)
    if not summary:
        raise ValueError(f"{out}: no finished ablation runs to report")
    notes = [*verdicts(summary),
             "top-1 in % on the evaluation split (Fashion-MNIST: the 10k test set), mean +- std over seeds; "
             "training minutes are the mean per run.",
             "'grouped kernels' is the 'learned a/b' variant (the layer's defaults): the same runs.",
             "MMACs from count_macs: the tensor shifts' additions are not multiply-accumulates, so that row "
             "counts fewer than the group-convolution rows that compute the same function."]
    cols = ["table", "label", "combination", "shift", "seeds", "top1_mean", "top1_std", "params", "mmacs",
            "train_min"]
    paths = write_table(out, "ablation", summary, title="Ablations (Tab. 6 combination, Tab. 7 shift)",
                        columns=cols, notes=notes, meta=meta)
    paths["png"] = plot_summary(summary, out / "ablation.png")
    run_cols = ["variant", "seed", "combination", "shift", "top1", "top5", "params", "macs", "train_seconds",
                "epochs", "device", "data"]
    write_table(out, "ablation_runs", list(results), title="Ablation runs", columns=run_cols, meta=meta)
    learned = {f"seed {r['seed']}": r["rates"] for r in results if r.get("rates") and r["variant"] == "learned"}
    if learned:
        write_rates(learned, out, name="rates", title="Learned rates of the learned a/b ablation model")
    return paths
