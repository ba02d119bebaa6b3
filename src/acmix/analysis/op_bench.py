"""Operator benchmark: ACmix implementations against a 3x3 convolution of the same width.

Everything is measured in one process, in interleaved rounds (each round runs
every implementation once, in a rotating order), and reported as medians and as
ratios to the convolution measured alongside, because these machines are
shared and noisy.  The convolution runs in both memory formats (contiguous and
channels_last, whose input is converted once, outside the timing); the faster
one by forward+backward is the row's baseline, and both are in the JSON.  On
CUDA the time is taken with CUDA events and bfloat16/float16 run under autocast
(float32 weights).  The default dispatch (``auto``: Triton on CUDA, the measured
faster CPU path on the CPU) is timed next to the paths it chooses from.
Peak memory is the largest amount of tensor memory alive during one
forward+backward (the upstream gradient of the output included) beyond what
existed before it (see :mod:`acmix.analysis.timing`).

Run ``python benchmarks/op_bench.py`` (or ``make bench``); ``--help`` lists options.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from ..nn import ACmix
from ..nn.parts import FactoryKwargs
from ..ops import Backend, acmix, acmix_unfold, native, resolve_backend
from ..ops.config import check_positive
from ..train.checkpoint import check_writable
from .timing import DTYPES, PeakMemory, autocast, check_device, check_precision, peak_bytes, time_ms

__all__ = ["PeakMemory", "main", "run"]

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]
CONVS = ("conv3x3", "conv3x3_cl")


def _implementations(c: int, stride: int, device: torch.device, dtype: torch.dtype, amp: bool,
                     include_unfold: bool) -> tuple[dict[str, Callable[[Tensor], Tensor]], ACmix]:
    dd: FactoryKwargs = {"device": device, "dtype": dtype}
    conv = nn.Conv2d(c, c, 3, stride=stride, padding=1, **dd)
    conv_cl = nn.Conv2d(c, c, 3, stride=stride, padding=1, **dd).to(memory_format=torch.channels_last)
    conv_cl.load_state_dict(conv.state_dict())
    stage1 = nn.Conv2d(c, 3 * c, 1, **dd)  # the three 1x1 convs, as one
    layer = ACmix(c, c, stride=stride, **dd)
    impls: dict[str, Callable[[Tensor], Tensor]] = {
        "conv3x3": conv,
        "conv3x3_cl": conv_cl,  # its input is channels_last too (see run)
        "stage1": stage1,
        "eager": lambda x: acmix(x, layer.weights(), layer.config, backend=Backend.EAGER),
    }
    # the default dispatch, whatever it picks here (Triton on a GPU; on the CPU its measured choice), next to eager
    impls["auto"] = lambda x: acmix(x, layer.weights(), layer.config, backend=Backend.AUTO)
    if device.type == "cpu" and dtype in (torch.float32, torch.float64) and not amp and native.available():
        impls["cpu_kernel"] = lambda x: acmix(x, layer.weights(), layer.config, backend=Backend.CPU_KERNEL)
    if include_unfold:
        impls["unfold"] = lambda x: acmix_unfold(x, layer.weights(), layer.config)
    return impls, layer


def check_options(*, batch: int, shapes, strides, rounds: int, device: str | torch.device = "cpu",
                  dtype: torch.dtype | str = torch.float32, amp: bool = False,
                  threads: int | None = None) -> tuple[torch.device, torch.dtype, bool]:
    """Device, dtype and autocast flag of a run; a one-line ``ValueError`` for any bad option.

    On CUDA, bfloat16 and float16 always run under autocast (float32 weights, as in training).
    """
    check_positive(batch, "batch")
    check_positive(rounds, "rounds")
    for s in strides:
        check_positive(s, "stride")
    if not shapes or not strides:
        raise ValueError("nothing to run: no shapes or no strides given")
    for c, hw in shapes:
        check_positive(c, "channels")
        check_positive(hw, "size")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
        raise ValueError(f"threads must be an int >= 0, got {threads!r}")
    dev = check_device(device)
    amp = amp or (dev.type == "cuda" and str(dtype).replace("torch.", "") in ("bfloat16", "float16"))
    return dev, check_precision(dev, dtype, amp), amp


def run(*, batch: int = 8, shapes=SHAPES, strides=(1, 2), rounds: int = 5, device: str = "cpu",
        dtype: torch.dtype = torch.float32, include_unfold: bool = True, threads: int | None = 2,
        amp: bool = False) -> list[dict]:
    """One row per (shape, stride): medians, ratios to the faster convolution format and peak memory of each
    implementation; printed as it goes."""
    dev, dtype, amp = check_options(batch=batch, shapes=shapes, strides=strides, rounds=rounds, device=device,
                                    dtype=dtype, amp=amp, threads=threads)
    if threads and dev.type == "cpu":
        torch.set_num_threads(threads)
    cudnn = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # the convolutions at their best (cuDNN picks during the warm-up)
    try:
        return _run(batch, shapes, strides, rounds, dev, dtype, amp, include_unfold)
    finally:
        torch.backends.cudnn.benchmark = cudnn


def _run(batch: int, shapes, strides, rounds: int, dev: torch.device, dtype: torch.dtype, amp: bool,
         include_unfold: bool) -> list[dict]:
    results = []
    for c, hw in shapes:
        for stride in strides:
            impls, layer = _implementations(c, stride, dev, dtype if not amp else torch.float32, amp, include_unfold)
            x = torch.randn(batch, c, hw, hw, device=dev, dtype=dtype if not amp else torch.float32,
                            requires_grad=True)
            x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
            inputs = {name: x_cl if name == "conv3x3_cl" else x for name in impls}
            ctx = functools.partial(autocast, dev, dtype if amp else None)

            def fwd(name, ctx=ctx, impls=impls, inputs=inputs):
                with torch.no_grad(), ctx():
                    impls[name](inputs[name])

            def fwd_bwd(name, ctx=ctx, impls=impls, inputs=inputs):
                xi = inputs[name]
                with ctx():
                    out = impls[name](xi)
                out.backward(torch.ones_like(out))  # a full upstream gradient, as inside a network (values immaterial)
                xi.grad = None

            first = {}
            for name in impls:  # warm-up: the first CPU-kernel call includes its build, auto's its measuring
                first[name] = time_ms(functools.partial(fwd_bwd, name), dev)
                fwd(name)  # auto measures inference apart from training
            times: dict[str, dict[str, list[float]]] = {n: {"fwd": [], "fwd_bwd": []} for n in impls}
            names = list(impls)
            for r in range(rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    if name == "unfold" and r >= max(2, rounds // 2):
                        continue  # slow: fewer rounds suffice for a 10-100x gap
                    times[name]["fwd"].append(time_ms(functools.partial(fwd, name), dev))
                    times[name]["fwd_bwd"].append(time_ms(functools.partial(fwd_bwd, name), dev))
            mem = {name: peak_bytes(functools.partial(fwd_bwd, name), dev) for name in impls}
            med = {n: {k: statistics.median(times[n][k]) for k in ("fwd", "fwd_bwd")} for n in impls}
            baseline = min(CONVS, key=lambda n: med[n]["fwd_bwd"])
            row = {"channels": c, "size": hw, "stride": stride, "batch": batch, "device": str(dev),
                   "dtype": str(dtype).replace("torch.", ""), "amp": amp, "baseline": baseline, "impl": {}}
            with ctx():  # what the timed fwd+bwd calls ran (on the CPU measured in the warm-up, then remembered)
                row["auto_backend"] = resolve_backend(x, layer.config, Backend.AUTO, layer.weights()).value
            base = med[baseline]
            for name in impls:
                row["impl"][name] = {
                    "fwd_ms": med[name]["fwd"], "fwd_bwd_ms": med[name]["fwd_bwd"], "first_call_ms": first[name],
                    "peak_mb": mem[name] / 2**20,
                    "fwd_ratio": med[name]["fwd"] / base["fwd"],
                    "fwd_bwd_ratio": med[name]["fwd_bwd"] / base["fwd_bwd"],
                    "mem_ratio": mem[name] / max(mem[baseline], 1),
                }
            results.append(row)
            _print_row(row)
    return results


def _print_row(row: dict) -> None:
    head = f"C={row['channels']} {row['size']}x{row['size']} s={row['stride']} b={row['batch']}"
    auto = f"; auto -> {row['auto_backend']}" if "auto_backend" in row else ""
    print(f"\n{head}  ({row['device']}, {row['dtype']}{', autocast' if row['amp'] else ''}; "
          f"x conv: vs {row['baseline']}{auto})")
    print(f"  {'impl':<10} {'fwd ms':>9} {'x conv':>7} {'f+b ms':>9} {'x conv':>7} {'peak MB':>8} {'x conv':>7}"
          f" {'1st call ms':>11}")
    for name, r in row["impl"].items():
        print(f"  {name:<10} {r['fwd_ms']:9.2f} {r['fwd_ratio']:7.2f} {r['fwd_bwd_ms']:9.2f} "
              f"{r['fwd_bwd_ratio']:7.2f} {r['peak_mb']:8.1f} {r['mem_ratio']:7.2f} {r['first_call_ms']:11.1f}")
    impl = row["impl"]
    if "unfold" in impl:
        for name in ("eager", "auto", "cpu_kernel"):
            if name in impl:
                speedup = impl["unfold"]["fwd_bwd_ms"] / impl[name]["fwd_bwd_ms"]
                print(f"  {name} is {speedup:.1f}x faster than unfold (fwd+bwd)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="op_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CUDA, 8 on the CPU")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="on CUDA bfloat16/float16 run under autocast; float16 needs CUDA")
    parser.add_argument("--amp", action="store_true", help="fp32 weights, autocast to --dtype (implied on CUDA)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-unfold", action="store_true", help="skip the authors' unfold algorithm")
    parser.add_argument("--strides", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="stage indices 1-4 to run (default all)")
    parser.add_argument("--fresh-build", action="store_true",
                        help="build the C++ kernel in an empty cache to time a first compile")
    parser.add_argument("--json", type=Path, default=None,
                        help="default benchmarks/results/op_bench_{cpu,cuda}.json")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        bad = [i for i in args.sizes or () if not 1 <= i <= len(SHAPES)]
        if bad:
            raise ValueError(f"--sizes takes stage indices 1-{len(SHAPES)}, got {bad[0]}")
        shapes = SHAPES if args.sizes is None else [SHAPES[i - 1] for i in args.sizes]
        dev = check_device(args.device)
        batch = args.batch if args.batch is not None else 32 if dev.type == "cuda" else 8
        check_options(batch=batch, shapes=shapes, strides=args.strides, rounds=args.rounds, device=dev,
                      dtype=args.dtype, amp=args.amp, threads=args.threads)
        out = args.json or Path(f"benchmarks/results/op_bench_{dev.type}.json")
        check_writable(out.parent, "--json folder")  # before the work, which would be lost
    except ValueError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    dtype = getattr(torch, args.dtype)
    build = None
    if dev.type == "cpu":
        if args.fresh_build:  # an empty extension cache: time a first compile, as on a fresh machine
            os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="acmix_ext_")
        start = time.perf_counter()
        native.available()
        build = time.perf_counter() - start
        what = "compile from scratch" if args.fresh_build else "compile, or load from the on-disk cache"
        print(f"compiled CPU kernel: {'available' if native.available() else 'unavailable'}; "
              f"first load {build:.1f} s ({what}); shapes never trigger a rebuild")
    else:
        print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    results = run(batch=batch, shapes=shapes, strides=tuple(args.strides), rounds=args.rounds,
                  device=str(dev), dtype=dtype, include_unfold=not args.no_unfold, threads=args.threads,
                  amp=args.amp)
    payload = {"torch": torch.__version__, "threads": args.threads, "kernel_load_s": build, "results": results}
    if dev.type == "cuda":
        payload["gpu"] = torch.cuda.get_device_name(dev)
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
