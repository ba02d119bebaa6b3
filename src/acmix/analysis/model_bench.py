"""Model benchmark: training-step and inference throughput and peak memory of whole models.

Every ACmix family is measured next to its baseline and timm's reference model,
in one process and in interleaved rounds (each round runs every (model, mode)
once, in a rotating order), reported as medians, because these machines are
shared and noisy; the ratio columns are to the group's reference (its first
model).  A training step is forward, cross-entropy on random labels, backward
and an SGD (momentum) step; inference is a forward under ``inference_mode``.
Peak memory is what one step allocates beyond what was alive before it, plus
the model's own parameters, buffers and (training) optimizer state: the peak of
a process that holds only this model (see :mod:`acmix.analysis.timing`).
A name ``model@eager`` runs the model with every ACmix layer forced to the
``eager`` backend (``docs/fast-paths.md``); on CUDA the default groups add it next to
the default dispatch, so the table shows what the GPU path gains.

Run ``python benchmarks/model_bench.py`` or ``acmix bench-models``; ``--help`` lists options.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ..argtypes import json_dict
from ..models._checks import known_model
from ..ops import Backend, use_backend
from ..ops.config import check_positive
from ..train.checkpoint import check_writable
from .timing import autocast, check_device, check_precision, peak_bytes, sync, time_ms

__all__ = ["FAMILIES", "add_arguments", "bench_models", "groups_from", "main", "markdown_table", "run_cli"]

# reference first (the ratio columns are to it), then the baseline, then ACmix
FAMILIES: dict[str, tuple[str, ...]] = {
    "resnet": ("resnet50", "conv_resnet50", "acmix_resnet50"),
    "swin": ("swin_tiny_patch4_window7_224", "acmix_swin_tiny"),
    "pvt": ("pvt_v1_tiny", "acmix_pvt_tiny"),
    "san": ("san10_patchwise", "acmix_san10"),
}
MODES = ("train", "infer")


def _split(name: str) -> tuple[str, str | None]:
    """``'model@backend'`` -> ``('model', 'backend')``; the backend is checked against :class:`Backend`."""
    base, _, backend = name.partition("@")
    if not base:
        raise ValueError(f"model name missing in {name!r}")
    if backend and backend not in {b.value for b in Backend}:
        choices = ", ".join(repr(b.value) for b in Backend)
        raise ValueError(f"backend {backend!r} in {name!r} is not one of {choices}")
    return base, backend or None


def _check(names: Sequence[str], batch_size: int, infer_batch_size: int, img_size: int, modes: Sequence[str],
           warmup: int, rounds: int) -> None:
    if isinstance(names, str) or not names:
        raise ValueError(f"names must be a non-empty list of model names, got {names!r}")
    for n in names:
        _split(n)
    check_positive(batch_size, "batch_size")
    check_positive(infer_batch_size, "infer_batch_size")
    check_positive(img_size, "img_size")
    check_positive(rounds, "rounds")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if isinstance(modes, str) or not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {modes!r}")


def _create(name: str, img_size: int, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` at ``img_size`` where the model takes one (fully convolutional ones do not)."""
    try:
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as e:
        if "img_size" not in str(e):
            raise
    return timm.create_model(name, **kwargs)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class _Runner:
    """One model on the device with its optimizer and inputs; ``step(mode)`` is one timed unit."""

    def __init__(self, name: str, kwargs: dict[str, Any], dev: torch.device, img_size: int,
                 batches: dict[str, int], channels_last: bool, amp: torch.dtype | None) -> None:
        if not known_model(name):
            raise ValueError(f"model {name!r} is not a registered timm model")
        self.model = _create(name, img_size, kwargs).to(dev)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=fmt)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4, momentum=0.9)
        chans = getattr(self.model, "pretrained_cfg", {}).get("input_size", (3,))[0]
        classes = getattr(self.model, "num_classes", 1000)
        self.x = {m: torch.randn(b, chans, img_size, img_size, device=dev).contiguous(memory_format=fmt)
                  for m, b in batches.items()}
        self.y = {m: torch.randint(0, classes, (b,), device=dev) for m, b in batches.items()}
        self.dev, self.amp = dev, amp

    def step(self, mode: str) -> None:
        if mode == "train":
            self.model.train()
            with autocast(self.dev, self.amp):
                out = self.model(self.x[mode])
            F.cross_entropy(out.float(), self.y[mode]).backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)  # nothing of this step outlives it
        else:
            self.model.eval()
            with torch.inference_mode(), autocast(self.dev, self.amp):
                self.model(self.x[mode])

    def resident_bytes(self, mode: str) -> int:
        """What a process holding only this model keeps between steps (weights, buffers, momentum)."""
        own = _nbytes(self.model.parameters()) + _nbytes(self.model.buffers())
        if mode == "train":
            own += _nbytes(t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t))
        return own


def _per_model_kwargs(bases: Sequence[str], model_kwargs: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Keys that name a benchmarked model carry that model's kwargs; the other keys go to every model."""
    model_kwargs = dict(model_kwargs or {})
    common = {k: v for k, v in model_kwargs.items() if k not in bases}
    return {b: {**common, **model_kwargs.get(b, {})} for b in bases}


def bench_models(names: Sequence[str], *, device="cpu", batch_size=32, infer_batch_size=None, img_size=224,
                 dtype=None, channels_last=False, modes=("train", "infer"), warmup=2, rounds=5,
                 model_kwargs=None) -> list[dict]:
    """Median throughput and peak memory of each (model, mode), measured in interleaved rounds.

    ``names`` are timm model names, optionally ``name@backend`` (every ACmix layer forced to that
    backend).  ``dtype`` bfloat16/float16 runs under autocast (float32 weights); None or float32 runs
    float32.  ``model_kwargs`` go to ``timm.create_model``: keys that are model names map to that
    model's kwargs, all other keys go to every model.  Returns one dict per (model, mode) with
    ``model, mode, img_s, ms, peak_mem_mb, batch_size, img_size, device, dtype`` (and ``channels_last``).
    """
    infer_batch_size = batch_size if infer_batch_size is None else infer_batch_size
    _check(names, batch_size, infer_batch_size, img_size, modes, warmup, rounds)
    dev = check_device(device)
    name = "float32" if dtype is None else str(dtype).replace("torch.", "")
    if name == "float64":
        raise ValueError("dtype='float64' is not a benchmark setting (use float32, bfloat16 or float16)")
    amp = None if name == "float32" else check_precision(dev, name, amp=True)
    batches = {m: batch_size if m == "train" else infer_batch_size for m in modes}
    split = {n: _split(n) for n in names}
    bases = list(dict.fromkeys(b for b, _ in split.values()))
    kwargs = _per_model_kwargs(bases, model_kwargs)
    cudnn = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # as in training: let cuDNN pick its algorithms once per shape
    try:
        torch.manual_seed(0)
        runners = {b: _Runner(b, kwargs[b], dev, img_size, batches, channels_last, amp) for b in bases}
        keys = [(n, m) for n in names for m in modes]

        def call(key: tuple[str, str]) -> Callable[[], None]:
            base, backend = split[key[0]]

            def fn() -> None:
                with use_backend(backend) if backend else contextlib.nullcontext():
                    runners[base].step(key[1])
            return fn

        calls = {k: call(k) for k in keys}
        for k in keys:  # warm-up: cuDNN's search, kernel builds and autotuning happen here
            for _ in range(warmup):
                calls[k]()
        sync(dev)
        times: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
        for r in range(rounds):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                times[k].append(time_ms(calls[k], dev))
        rows = []
        for k in keys:
            ms = statistics.median(times[k])
            mem = peak_bytes(calls[k], dev) + runners[split[k[0]][0]].resident_bytes(k[1])
            rows.append({"model": k[0], "mode": k[1], "img_s": batches[k[1]] / ms * 1e3, "ms": ms,
                         "peak_mem_mb": mem / 2**20, "batch_size": batches[k[1]], "img_size": img_size,
                         "device": str(dev), "dtype": str(amp or torch.float32).replace("torch.", ""),
                         "channels_last": channels_last})
        return rows
    finally:
        torch.backends.cudnn.benchmark = cudnn
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def groups_from(items: Sequence[str], backends: Sequence[str] = ("auto",)) -> list[tuple[str, ...]]:
    """Benchmark groups from ``--models`` items: a family (``resnet``, ``swin``, ``pvt``, ``san``) or
    ``all``, ``model:reference`` (one pair) or one model name; ``backends`` other than ``auto`` add
    ``acmix_*@backend`` next to each ACmix model."""
    groups: list[tuple[str, ...]] = []
    for item in items:
        if item == "all":
            groups += FAMILIES.values()
        elif item in FAMILIES:
            groups.append(FAMILIES[item])
        elif ":" in item:
            model, _, ref = item.partition(":")
            if not model or not ref:
                raise ValueError(f"a pair is 'model:reference', got {item!r}")
            groups.append((ref, model))
        else:
            groups.append((item,))
    extra = [b for b in backends if b != "auto"]
    for b in extra:
        _split(f"x@{b}")
    return [tuple(n for m in g for n in (m, *(f"{m}@{b}" for b in extra if m.startswith("acmix_")))) for g in groups]


def add_ratios(rows: list[dict], groups: Sequence[tuple[str, ...]]) -> None:
    """``ref``, ``img_s_ratio`` and ``mem_ratio`` on each row: to its group's first model, same mode."""
    by = {(r["model"], r["mode"]): r for r in rows}
    for g in groups:
        for n in g:
            for mode in MODES:
                row, ref = by.get((n, mode)), by.get((g[0], mode))
                if row is not None and ref is not None:
                    row.update(ref=g[0], img_s_ratio=row["img_s"] / ref["img_s"],
                               mem_ratio=row["peak_mem_mb"] / ref["peak_mem_mb"])


def markdown_table(rows: list[dict]) -> str:
    """One line per model: img/s, ratio to the reference and peak MB for each mode measured."""
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    by = {(r["model"], r["mode"]): r for r in rows}
    head = ["model", *(f"{m} {c}" for m in modes for c in ("img/s", "× ref", "peak MB", "× ref")), "ref"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = [f"`{model}`"]
        ref = ""
        for m in modes:
            r = by.get((model, m))
            if r is None:
                cells += ["", "", "", ""]
                continue
            ref = r.get("ref", "")
            cells += [f"{r['img_s']:,.1f}", _ratio(r, "img_s_ratio"), f"{r['peak_mem_mb']:,.0f}",
                      _ratio(r, "mem_ratio")]
        lines.append("| " + " | ".join([*cells, f"`{ref}`" if ref else ""]) + " |")
    return "\n".join(lines)


def _ratio(row: dict, key: str) -> str:
    return f"{row[key]:.2f}×" if key in row else ""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--models", nargs="+", default=["all"],
                        help="families (resnet swin pvt san), 'all', 'model:reference' pairs or model names")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="ACmix backends to time: 'auto' is the default dispatch, others add model@backend "
                             "rows (default: auto eager on CUDA, auto on the CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default 64 CUDA, 8 CPU)")
    parser.add_argument("--infer-batch-size", type=int, default=None,
                        help="inference batch (default 256 CUDA, the training batch on the CPU)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="autocast dtype (float32: none; default bfloat16 with --amp)")
    parser.add_argument("--amp", action="store_true", help="autocast (bfloat16 unless --dtype)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps each (default 3 CUDA, 1 CPU)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--model-kwargs", type=json_dict, default=None, metavar="JSON",
                        help="timm.create_model kwargs: for every model, or {model: {...}}")
    parser.add_argument("--json", type=Path, default=None,
                        help="default benchmarks/results/model_bench_{cpu,cuda}.json")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed options describe: print the table, write the JSON.  ``ValueError`` on bad
    options."""
    dev = check_device(args.device)
    cuda = dev.type == "cuda"
    dtype = args.dtype or ("bfloat16" if args.amp else None)
    if args.threads < 0:
        raise ValueError(f"threads must be an int >= 0, got {args.threads}")
    if args.threads and not cuda:
        torch.set_num_threads(args.threads)
    groups = groups_from(args.models, args.backends or (("auto", "eager") if cuda else ("auto",)))
    names = list(dict.fromkeys(n for g in groups for n in g))
    out = args.json or Path(f"benchmarks/results/model_bench_{dev.type}.json")
    check_writable(out.parent, "--json folder")  # before the work, which would be lost
    batch = args.batch_size if args.batch_size is not None else 64 if cuda else 8
    settings = {"batch_size": batch, "infer_batch_size": args.infer_batch_size if args.infer_batch_size is not None
                else 256 if cuda else batch, "img_size": args.img_size, "dtype": dtype,
                "channels_last": args.channels_last, "modes": tuple(args.modes),
                "warmup": args.warmup if args.warmup is not None else 3 if cuda else 1,
                "rounds": args.rounds if args.rounds is not None else 10 if cuda else 3}
    where = torch.cuda.get_device_name(dev) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}, torch {torch.__version__}, timm {timm.__version__}: {', '.join(names)}")
    rows = bench_models(names, device=str(dev), model_kwargs=args.model_kwargs, **settings)
    add_ratios(rows, groups)
    print(f"\nbatch {settings['batch_size']} train / {settings['infer_batch_size']} inference, "
          f"{args.img_size}², {rows[0]['dtype']}{' autocast' if dtype not in (None, 'float32') else ''}"
          f"{', channels_last' if args.channels_last else ''}, medians of {settings['rounds']} rounds\n")
    print(markdown_table(rows))
    payload = {"torch": torch.__version__, "timm": timm.__version__, "device": where,
               "settings": {**settings, "modes": list(settings["modes"])}, "groups": [list(g) for g in groups],
               "results": rows}
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="model_bench", description=__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
        raise  # unreachable: exit raises SystemExit


if __name__ == "__main__":
    main()
