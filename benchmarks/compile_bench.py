"""``torch.compile(dynamic=True)`` of a small ACmix model on the CPU: compile time, a second size, speed.

Prints the first compile's seconds, the second input size's seconds and the number
of graphs dynamo built, the largest difference to eager, and eager vs compiled
milliseconds per batch (10 calls after a warm-up); writes the same to
``benchmarks/results/compile_bench_cpu.json``.  This is the measurement behind the
README's ``torch.compile`` paragraph.

    OMP_NUM_THREADS=2 python benchmarks/compile_bench.py [--model acmix_resnet_tiny]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
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
    p.add_argument("--json", default=str(Path(__file__).with_name("results") / "compile_bench_cpu.json"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model = timm.create_model(args.model, num_classes=10).eval()
    chans = model.in_chans if hasattr(model, "in_chans") else 3
    compiled = torch.compile(model, dynamic=True)
    x1, x2 = torch.randn(4, chans, 28, 28), torch.randn(4, chans, 36, 44)
    with torch.no_grad():
        start = time.perf_counter()
        y1 = compiled(x1)
        first_s, graphs_first = time.perf_counter() - start, counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        y2 = compiled(x2)
        second_s, graphs_second = time.perf_counter() - start, counters["stats"]["unique_graphs"]
        result = {"model": args.model, "threads": torch.get_num_threads(), "first_compile_s": round(first_s, 1),
                  "second_size_s": round(second_s, 1), "graphs_after_first": graphs_first,
                  "graphs_after_second": graphs_second,
                  "max_diff": max((y1 - model(x1)).abs().max().item(), (y2 - model(x2)).abs().max().item()),
                  "eager_ms": round(_ms(model, x1), 1), "compiled_ms": round(_ms(compiled, x1), 1)}
    print("| " + " | ".join(result) + " |\n|" + "---|" * len(result) + "\n| "
          + " | ".join(str(v) for v in result.values()) + " |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
