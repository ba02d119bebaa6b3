"""``torch.compile(dynamic=True)`` of a small ACmix model on the CPU: compile time, new sizes, speed.

Calls the compiled model at each size (28x28, 36x44, 52x20 by default) and prints the seconds
of each call with the number of graphs dynamo has built after it (one graph for
all sizes means no recompilation), the largest difference to eager, and eager vs
compiled milliseconds per batch (10 calls after a warm-up); writes the same to
``benchmarks/results/compile_bench_cpu.json``.  This is the measurement behind the
README's ``torch.compile`` paragraph.

Run it without ``OMP_WAIT_POLICY=PASSIVE``: inductor's CPU code opens many short
parallel regions, and sleeping threads made the compiled model 14-19x slower here.
For a cold compile time, point ``TORCHINDUCTOR_CACHE_DIR`` at an empty folder.

Duck sizing is switched off (``use_duck_shape = False``, ``--duck-shape`` keeps it):
otherwise a square first input makes dynamo assume ``H == W`` and recompile at the
first non-square one, in any model.  Tracing is size-oblivious
(``backed_size_oblivious = True``): otherwise Swin builds a graph for each pattern of
stages with one window per axis (README, "Export with dynamic shapes").

    OMP_NUM_THREADS=2 python benchmarks/compile_bench.py [--model acmix_resnet_tiny]
    OMP_NUM_THREADS=2 python benchmarks/compile_bench.py --model acmix_swin_tiny \
        --model-kwargs '{"embed_dim": 32, "depths": [1, 1], "num_heads": [2, 2]}' \
        --sizes 64x72 37x90 120x20 --json benchmarks/results/compile_bench_swin_cpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
import torch.fx.experimental._config
from torch._dynamo.utils import counters

import acmix  # noqa: F401  (registers the acmix_* models)


def _ms(fn, x: torch.Tensor, calls: int = 10) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) * 1000 / calls


def main(argv: list[str] | None = None) -> dict[str, float | int | str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="acmix_resnet_tiny")
    p.add_argument("--model-kwargs", type=json.loads, default={}, help="JSON object for timm.create_model")
    p.add_argument("--sizes", nargs="+", default=["28x28", "36x44", "52x20"], help="HxW, in calling order")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--duck-shape", action="store_true", help="keep dynamo's duck sizing (H == W assumed)")
    p.add_argument("--json", default=str(Path(__file__).with_name("results") / "compile_bench_cpu.json"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = timm.create_model(args.model, **{"num_classes": 10, **args.model_kwargs}).eval()
    chans = model.in_chans if hasattr(model, "in_chans") else 3
    torch.fx.experimental._config.use_duck_shape = args.duck_shape
    torch.fx.experimental._config.backed_size_oblivious = True
    compiled = torch.compile(model, dynamic=True)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    result: dict[str, float | int | str] = {"model": args.model, "model_kwargs": json.dumps(args.model_kwargs),
                                            "batch": args.batch, "threads": torch.get_num_threads(),
                                            "duck_shape": int(args.duck_shape)}
    diff = 0.0
    with torch.no_grad():
        for h, w in sizes:
            x = torch.randn(args.batch, chans, h, w)
            start = time.perf_counter()
            y = compiled(x)
            result[f"s_at_{h}x{w}"] = round(time.perf_counter() - start, 1)
            result[f"graphs_after_{h}x{w}"] = counters["stats"]["unique_graphs"]
            diff = max(diff, (y - model(x)).abs().max().item())
        x1 = torch.randn(args.batch, chans, *sizes[0])
        result.update(max_diff=diff, eager_ms=round(_ms(model, x1), 1), compiled_ms=round(_ms(compiled, x1), 1))
    print("| " + " | ".join(result) + " |\n|" + "---|" * len(result) + "\n| "
          + " | ".join(str(v) for v in result.values()) + " |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
