"""Registers, spills and shared memory of the Triton attention kernels, without running them.

Each kernel is built through Triton's whole pipeline (``triton.compile`` to a cubin) for a GPU target, by
default an H100/H200 (sm_90), so no GPU is needed; on a CUDA machine ``--target device`` builds for its own.
The registers per thread and the spilled bytes (stack and local memory) are read from the binary with the
``cuobjdump`` Triton ships, the shared memory from Triton's metadata.  The tile is the one the dispatcher
compiles when nothing is measured (``ACMIX_AUTOTUNE=0``), or every tile the autotuner may try (``--every-tile``).

Spills are what the tile sizes were chosen by (``docs/fast-paths.md``): a program that spills waits on local
memory for its own operands.  Run ``python benchmarks/kernel_resources.py`` (table + JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..ops import triton_attention as ta
from ..train.checkpoint import check_writable
from .report import markdown_table
from .timing import DTYPES

__all__ = ["KERNELS", "RESNET50_GEOMETRIES", "SM90_SHARED", "build", "launch_tiles", "main", "resources", "rows"]

SM90_SHARED = 227 * 1024  # shared memory one H100/H200 block may use (bytes)
KERNELS = ("attention_fwd", "attention_bwd_query", "attention_bwd_key")
# (kernel, stride, head dim, map side) of acmix_resnet50's window attention: 4 heads, head dims 16 to 128,
# stride 2 where a stage starts; and a kernel-3 layer
RESNET50_GEOMETRIES = [(7, 1, 16, 56), (7, 1, 32, 28), (7, 1, 64, 14), (7, 1, 128, 7),
                       (7, 2, 32, 56), (7, 2, 64, 28), (7, 2, 128, 14), (3, 1, 32, 28)]
_ACC_POINTERS = {"lse_ptr", "delta_ptr", "scale_ptr", "ra_ptr", "rc_ptr", "gc_ptr", "dk_ptr", "dv_ptr", "rk_ptr",
                 "rv_ptr", "ck_ptr", "cv_ptr"}
_TRITON_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64"}


def _jit_function(kernel: Any) -> Any:
    import triton

    while not isinstance(kernel, triton.runtime.jit.JITFunction):  # through autotune/heuristics wrappers
        kernel = kernel.fn
    return kernel


def _target(name: str) -> Any:
    from triton.backends.compiler import GPUTarget

    if name == "device":
        import triton

        return triton.runtime.driver.active.get_current_target()
    return GPUTarget("cuda", int(name.removeprefix("sm_")), 32)


def build(kernel: Any, pointers: dict[str, str], constants: dict[str, Any], num_warps: int = 4,
          target: str = "sm_90") -> Any:
    """``kernel`` (a ``triton.jit`` function, or an autotuned/heuristics wrapper of one) compiled for ``target``
    (``"sm_90"``, ``"sm_80"``, ..., or ``"device"``): ``pointers`` maps pointer arguments to Triton types
    (``"*bf16"``), ``constants`` the constexprs; other arguments are ``i32``."""
    import triton
    from triton.compiler import ASTSource

    fn = _jit_function(kernel)
    signature = {name: pointers.get(name, "constexpr" if name in constants else "i32") for name in fn.arg_names}
    return triton.compile(ASTSource(fn, signature, constants), target=_target(target),
                          options={"num_warps": num_warps})


def resources(compiled: Any) -> dict[str, int]:
    """Registers per thread, spilled bytes per thread (stack + local memory) and shared memory of a :func:`build`."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        Path(path).write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage: {usage!r}")
    return {"registers": int(found[1]), "spilled": int(found[2]) + int(found[3]),
            "shared": int(compiled.metadata.shared)}


@contextlib.contextmanager
def _autotune(on: bool) -> Iterator[None]:
    old = os.environ.get("ACMIX_AUTOTUNE")
    os.environ["ACMIX_AUTOTUNE"] = "1" if on else "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ["ACMIX_AUTOTUNE"]
        else:
            os.environ["ACMIX_AUTOTUNE"] = old


def launch_tiles(name: str, dtype: torch.dtype, kernel: int, stride: int, head_dim: int, size: int, *,
                 every_tile: bool = False, tiles: list[tuple[int, int, int]] | None = None,
                 min_block_d: int | None = None) -> list[tuple[Any, dict[str, Any]]]:
    """``(config, constexprs)`` of the tiles a GPU launch of ``name`` uses on a ``size`` x ``size`` map: the one
    compiled when nothing is measured, the autotuner's candidates with ``every_tile``, or exactly ``tiles``
    (``(TH, TW, num_warps)``, unpruned).  The constexprs are those of ``ta._launch_args`` (with ``min_block_d``,
    head dims are padded to at least that instead of ``ta.block_d``'s 32) and the tile's heuristics."""
    mod = ta._kernels(False)
    k = torch.empty(2, 4, head_dim, size, size, dtype=dtype, device="meta")
    ho = (size - 1) // stride + 1
    r = torch.empty(2, 4, 2, ho, ho, dtype=dtype, device="meta")
    _, (_, _, h, w, ho, wo), meta = ta._launch_args(k, r, k, k, kernel, stride, 1, interpret=False)
    if min_block_d is not None:
        meta["BLOCK_D"] = max(min_block_d, ta._pow2(head_dim))
    key_side = name == "attention_bwd_key"
    heuristics, extent = ((mod._key_heuristics, mod._key_extent) if key_side
                          else (mod._query_heuristics, mod._query_extent))
    configs = [mod.triton.Config({"TH": th, "TW": tw}, num_warps=nw) for th, tw, nw in tiles or ta.TILES]
    if tiles is None:
        with _autotune(every_tile):
            configs = mod._prune(heuristics, extent)(configs, {"q_ptr": k, "H": h, "W": w, "HO": ho, "WO": wo},
                                                     **meta)
    out = []
    for cfg in configs:
        constants = {**meta, **cfg.kwargs, **heuristics({**meta, **cfg.kwargs})}
        if name != "attention_bwd_key":
            constants["MIX"] = True  # the layer's path: the rates in the forward's epilogue and the dQ kernel
        out.append((cfg, constants))
    return out


def build_tile(name: str, dtype: torch.dtype, cfg: Any, constants: dict[str, Any],
               target: str = "sm_90") -> dict[str, int]:
    """:func:`resources` of kernel ``name`` built for one tile of :func:`launch_tiles`."""
    kernel = getattr(ta._kernels(False), name)
    acc = "fp64" if dtype == torch.float64 else "fp32"
    pointers = {arg: "*" + (acc if arg in _ACC_POINTERS else _TRITON_TYPES[dtype])
                for arg in _jit_function(kernel).arg_names if arg.endswith("_ptr")}
    return resources(build(kernel, pointers, constants, cfg.num_warps, target))


def rows(dtypes: list[torch.dtype], geometries: list[tuple[int, int, int, int]], *, every_tile: bool = False,
         tiles: list[tuple[int, int, int]] | None = None, min_block_d: int | None = None,
         target: str = "sm_90") -> list[dict[str, Any]]:
    """One row per (dtype, geometry, kernel, tile) (:func:`launch_tiles`); geometries outside ``ta.fits`` are
    not launched: skipped."""
    out = []
    for dtype in dtypes:
        for ka, s, hd, size in geometries:
            if not ta.fits(dtype, hd, ka, s, 1):
                continue
            for name in KERNELS:
                for cfg, constants in launch_tiles(name, dtype, ka, s, hd, size, every_tile=every_tile,
                                                   tiles=tiles, min_block_d=min_block_d):
                    used = build_tile(name, dtype, cfg, constants, target)
                    out.append({"dtype": str(dtype).removeprefix("torch."), "kernel": ka, "stride": s,
                                "head_dim": hd, "map": f"{size}x{size}", "op": name.removeprefix("attention_"),
                                "tile": f"{cfg.kwargs['TH']}x{cfg.kwargs['TW']}/{cfg.num_warps}w", **used})
                    print(markdown_table([out[-1]]).splitlines()[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", nargs="+", choices=DTYPES, default=["bfloat16", "float32"])
    p.add_argument("--target", default="sm_90", help="sm_NN, or 'device' (this machine's GPU)")
    p.add_argument("--every-tile", action="store_true", help="every tile the autotuner may try")
    p.add_argument("--tile", nargs="+", default=None, metavar="THxTWxWARPS",
                   help="build these tiles instead, unpruned (e.g. 8x8x4, the default before registers chose it)")
    p.add_argument("--min-block-d", type=int, default=None,
                   help="pad head dims to at least this (a power of two >= 16) instead of 32")
    p.add_argument("--json", type=Path, default=None, help="default benchmarks/results/kernel_resources_<target>.json")
    args = p.parse_args(argv)
    if args.target != "device" and not re.fullmatch(r"sm_\d+", args.target):
        p.error(f"--target must be sm_NN or 'device', got {args.target!r}")
    bad = [t for t in args.tile or [] if not re.fullmatch(r"\d+x\d+x\d+", t)]
    if bad:
        p.error(f"--tile takes THxTWxWARPS, got {bad[0]!r}")
    tiles = None
    if args.tile:
        tiles = [(int(th), int(tw), int(nw)) for th, tw, nw in (t.split("x") for t in args.tile)]
    if args.min_block_d is not None and (args.min_block_d < 16 or args.min_block_d & (args.min_block_d - 1)):
        p.error(f"--min-block-d must be a power of two >= 16, got {args.min_block_d}")
    try:
        import triton
        import triton.backends.nvidia  # the compiler, and the cuobjdump that reads the binaries
    except ImportError:
        p.error("needs Triton with its NVIDIA backend (pip install triton)")
    out = args.json or Path(f"benchmarks/results/kernel_resources_{args.target}.json")
    check_writable(out.parent, "--json folder")

    print(f"triton {triton.__version__}, target {args.target}; per thread: registers, spilled bytes; shared: bytes")
    table = rows([getattr(torch, d) for d in args.dtype], RESNET50_GEOMETRIES, every_tile=args.every_tile,
                 tiles=tiles, min_block_d=args.min_block_d, target=args.target)
    print("\n" + markdown_table(table))
    out.write_text(json.dumps({"triton": triton.__version__, "target": args.target, "rows": table}, indent=2))
    print(f"\nwrote {out}")
