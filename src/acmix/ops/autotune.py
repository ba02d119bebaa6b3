"""Measured backend choice: time the exact paths once per input signature and remember the winner.

Where two implementations can both win (on the CPU: the C++ kernel and the
eager dense/tiled attention; which is faster depends on the map size, the
width, the thread count and the machine), ``Backend.AUTO`` runs each candidate
a few times on the call's own input (forward, plus backward when the call
records gradients), keeps the fastest, and remembers the choice in memory and
in a JSON file keyed by the machine (device name, thread count) and the torch
and acmix versions, so the next process starts with it.  All candidates are
exact (``docs/fast-paths.md``), so the choice changes speed, not results beyond
float rounding.

Switches: ``ACMIX_AUTOTUNE=0`` turns measuring off (a fixed size rule decides,
see :func:`acmix.ops.fast.prefer_dense`); ``ACMIX_CACHE_DIR`` moves the file
(default ``~/.cache/acmix``).  Nothing is measured inside ``torch.compile`` or
while exporting.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["cache_file", "choose", "clear", "enabled"]

_lock = threading.Lock()
_memory: dict[str, str] = {}
_loaded_for: str | None = None
_warned = False


def enabled() -> bool:
    """Whether ``AUTO`` measures (``ACMIX_AUTOTUNE`` is not ``0``)."""
    return os.environ.get("ACMIX_AUTOTUNE", "1") != "0"


def cache_file() -> Path:
    """The JSON file holding the measured choices of every machine that shares it."""
    root = os.environ.get("ACMIX_CACHE_DIR") or Path.home() / ".cache" / "acmix"
    return Path(root) / "dispatch.json"


def _machine(device: torch.device) -> str:
    from .. import __version__

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip()
    return f"{device.type}:{name}|torch {torch.__version__}|acmix {__version__}"


def _read(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, machine: str) -> None:
    global _warned
    from ..checkpoint_io import CheckpointError, atomic_write

    data = _read(path)  # merge: other processes may have written meanwhile
    data.setdefault(machine, {}).update(_memory)
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True))

    try:
        atomic_write(path, write)
    except (OSError, CheckpointError) as exc:  # a read-only home must not break the layer
        if not _warned:
            _warned = True
            warnings.warn(f"acmix: cannot write the backend cache {path} ({exc}); choices are kept in memory",
                          RuntimeWarning, stacklevel=4)


def clear() -> None:
    """Forget the choices held in memory (the file stays)."""
    global _loaded_for
    with _lock:
        _memory.clear()
        _loaded_for = None


def _time(run: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def choose(key: str, candidates: dict[str, Callable[[], None]], device: torch.device, rounds: int = 3) -> str:
    """The fastest of ``candidates`` (name -> a call that runs it once) for ``key`` on ``device``.

    Measured on the first call for a key (one warm-up, then ``rounds``
    interleaved timings, the minimum of each), then read from memory.
    """
    global _loaded_for
    machine = _machine(device)
    full = f"{key}|{','.join(sorted(candidates))}"
    with _lock:
        if _loaded_for != machine:
            _memory.clear()
            _memory.update(_read(cache_file()).get(machine, {}))
            _loaded_for = machine
        if _memory.get(full) in candidates:
            return _memory[full]
    best = dict.fromkeys(candidates, float("inf"))
    # identity hooks hide the trial runs' saved tensors from the caller's (activation checkpointing counts
    # them, and its recomputation, which finds the choice remembered, would save fewer)
    with torch.autograd.graph.saved_tensors_hooks(_same, _same):
        for run in candidates.values():
            run()  # warm-up: caches, lazily built masks, first-touch allocations
        for _ in range(rounds):
            for name, run in candidates.items():
                best[name] = min(best[name], _time(run, device))
    winner = min(best, key=best.__getitem__)
    with _lock:
        _memory[full] = winner
        _write(cache_file(), machine)
    return winner
