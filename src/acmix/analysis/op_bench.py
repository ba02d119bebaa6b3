"""Operator benchmark: ACmix implementations against a 3x3 convolution of the same width.

Everything is measured in one process, in interleaved rounds (each round runs
every implementation once, in a rotating order), and reported as medians and as
ratios to the convolution measured alongside, because these machines are
shared and noisy.  Peak memory is the largest amount of tensor memory alive
during one forward+backward (the upstream gradient of the output included)
beyond what existed before it: on CUDA from the
caching allocator's counters, on CPU by tracking every tensor an operator
allocates (a ``TorchDispatchMode``; views and in-place results are not new
memory).

Run ``python benchmarks/op_bench.py`` (or ``make bench``); ``--help`` lists options.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..nn import ACmix
from ..ops import Backend, acmix, acmix_unfold, native

__all__ = ["PeakMemory", "main", "run"]

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]


class PeakMemory(TorchDispatchMode):
    """Peak bytes of tensors allocated by operators while active (CPU or any device)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        for i, t in enumerate(tree_flatten(out)[0]):
            aliased = i < len(returns) and returns[i].alias_info is not None
            if isinstance(t, Tensor) and not aliased:
                self._track(t)
        return out

    def _track(self, t: Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0:
            return
        entry = self.live.get(ptr)
        if entry is None:
            entry = self.live[ptr] = [storage.nbytes(), 0]
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with PeakMemory() as tracker:
        fn()
    return tracker.peak


def _implementations(c: int, stride: int, device: torch.device, dtype: torch.dtype,
                     include_unfold: bool) -> dict[str, Callable[[Tensor], Tensor]]:
    dd = {"device": device, "dtype": dtype}
    conv = nn.Conv2d(c, c, 3, stride=stride, padding=1, **dd)
    stage1 = nn.Conv2d(c, 3 * c, 1, **dd)  # the three 1x1 convs, as one
    layer = ACmix(c, c, stride=stride, **dd)
    impls: dict[str, Callable[[Tensor], Tensor]] = {
        "conv3x3": conv,
        "stage1": stage1,
        "eager": lambda x: acmix(x, layer.weights(), layer.config, backend=Backend.EAGER),
    }
    if device.type == "cpu" and dtype in (torch.float32, torch.float64) and native.available():
        impls["compiled"] = lambda x: acmix(x, layer.weights(), layer.config, backend=Backend.COMPILED)
    if include_unfold:
        impls["unfold"] = lambda x: acmix_unfold(x, layer.weights(), layer.config)
    return impls


def _time(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def run(*, batch: int = 8, shapes=SHAPES, strides=(1, 2), rounds: int = 5, device: str = "cpu",
        dtype: torch.dtype = torch.float32, include_unfold: bool = True, threads: int | None = 2,
        amp: bool = False) -> list[dict]:
    dev = torch.device(device)
    if threads and dev.type == "cpu":
        torch.set_num_threads(threads)
    results = []
    for c, hw in shapes:
        for stride in strides:
            impls = _implementations(c, stride, dev, dtype if not amp else torch.float32, include_unfold)
            x = torch.randn(batch, c, hw, hw, device=dev, dtype=dtype if not amp else torch.float32,
                            requires_grad=True)
            ctx = (lambda: torch.autocast(dev.type, dtype=dtype)) if amp else _null

            def fwd(f, x=x, ctx=ctx):
                with torch.no_grad(), ctx():
                    f(x)

            def fwd_bwd(f, x=x, ctx=ctx):
                with ctx():
                    out = f(x)
                out.backward(torch.ones_like(out))  # a full upstream gradient, as inside a network (values immaterial)
                x.grad = None

            first = {}
            for name, f in impls.items():  # warm-up; the first compiled call includes its build
                first[name] = _time(lambda f=f: fwd_bwd(f), dev)
            times: dict[str, dict[str, list[float]]] = {n: {"fwd": [], "fwd_bwd": []} for n in impls}
            names = list(impls)
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    f = impls[name]
                    if name == "unfold" and r >= max(2, rounds // 2):
                        continue  # slow: fewer rounds suffice for a 10-100x gap
                    times[name]["fwd"].append(_time(lambda f=f: fwd(f), dev))
                    times[name]["fwd_bwd"].append(_time(lambda f=f: fwd_bwd(f), dev))
            mem = {name: _peak_bytes(lambda f=f: fwd_bwd(f), dev) for name, f in impls.items()}
            row = {"channels": c, "size": hw, "stride": stride, "batch": batch, "device": str(dev),
                   "dtype": str(dtype).replace("torch.", ""), "amp": amp, "impl": {}}
            base = {k: statistics.median(times["conv3x3"][k]) for k in ("fwd", "fwd_bwd")}
            for name in impls:
                med = {k: statistics.median(times[name][k]) for k in ("fwd", "fwd_bwd")}
                row["impl"][name] = {
                    "fwd_ms": med["fwd"], "fwd_bwd_ms": med["fwd_bwd"], "first_call_ms": first[name],
                    "peak_mb": mem[name] / 2**20,
                    "fwd_ratio": med["fwd"] / base["fwd"], "fwd_bwd_ratio": med["fwd_bwd"] / base["fwd_bwd"],
                    "mem_ratio": mem[name] / max(mem["conv3x3"], 1),
                }
            results.append(row)
            _print_row(row)
    return results


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _print_row(row: dict) -> None:
    head = f"C={row['channels']} {row['size']}x{row['size']} s={row['stride']} b={row['batch']}"
    print(f"\n{head}  ({row['device']}, {row['dtype']}{', autocast' if row['amp'] else ''})")
    print(f"  {'impl':<9} {'fwd ms':>9} {'x conv':>7} {'f+b ms':>9} {'x conv':>7} {'peak MB':>8} {'x conv':>7}"
          f" {'1st call ms':>11}")
    for name, r in row["impl"].items():
        print(f"  {name:<9} {r['fwd_ms']:9.2f} {r['fwd_ratio']:7.2f} {r['fwd_bwd_ms']:9.2f} "
              f"{r['fwd_bwd_ratio']:7.2f} {r['peak_mb']:8.1f} {r['mem_ratio']:7.2f} {r['first_call_ms']:11.1f}")
    impl = row["impl"]
    if "unfold" in impl:
        for name in ("eager", "compiled"):
            if name in impl:
                speedup = impl["unfold"]["fwd_bwd_ms"] / impl[name]["fwd_bwd_ms"]
                print(f"  {name} is {speedup:.1f}x faster than unfold (fwd+bwd)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--amp", action="store_true", help="fp32 weights, autocast to --dtype")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-unfold", action="store_true", help="skip the authors' unfold algorithm")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="stage indices 1-4 to run (default all)")
    parser.add_argument("--fresh-build", action="store_true",
                        help="build the C++ kernel in an empty cache to time a first compile")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/op_bench.json"))
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    shapes = SHAPES if args.sizes is None else [SHAPES[i - 1] for i in args.sizes]
    build = None
    if args.device == "cpu":
        if args.fresh_build:  # an empty extension cache: time a first compile, as on a fresh machine
            os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="acmix_ext_")
        start = time.perf_counter()
        native.available()
        build = time.perf_counter() - start
        what = "compile from scratch" if args.fresh_build else "compile, or load from the on-disk cache"
        print(f"compiled CPU kernel: {'available' if native.available() else 'unavailable'}; "
              f"first load {build:.1f} s ({what}); shapes never trigger a rebuild")
    results = run(batch=args.batch, shapes=shapes, strides=tuple(args.strides), rounds=args.rounds,
                  device=args.device, dtype=dtype, include_unfold=not args.no_unfold, threads=args.threads,
                  amp=args.amp)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"torch": torch.__version__, "threads": args.threads, "kernel_load_s": build, "results": results}
    args.json.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
