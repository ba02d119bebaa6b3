"""What the operator and model benchmarks share: the device and precision checks, wall-clock timing
(``torch.cuda.Event`` pairs on CUDA, so the time is the GPU's, not the launch queue's) and peak memory.

Peak memory is the largest amount of tensor memory alive during one call beyond what existed before it:
on CUDA from the caching allocator's counters, on CPU by tracking every tensor an operator allocates
(a ``TorchDispatchMode``; views and in-place results are not new memory).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["PeakMemory", "autocast", "check_device", "check_precision", "peak_bytes", "sync", "time_ms"]

DTYPES = ("float32", "float64", "bfloat16", "float16")


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


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; ``ValueError`` unless it is the CPU or an available CUDA device."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device (use 'cpu' or 'cuda')") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported (use 'cpu' or 'cuda')")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def check_precision(dev: torch.device, dtype: str | torch.dtype | None, amp: bool) -> torch.dtype:
    """The compute dtype; ``ValueError`` for a combination these benchmarks do not run.

    float16 needs CUDA (the CPU has no fast float16 convolution or autocast to it), and float64
    autocast does not exist.
    """
    name = "float32" if dtype is None else str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
    if name == "float16" and dev.type != "cuda":
        raise ValueError("dtype='float16' runs on CUDA only (use bfloat16 on the CPU)")
    if amp and name in ("float32", "float64"):
        raise ValueError(f"--amp autocasts to bfloat16 or float16, not {name}")
    return getattr(torch, name)


def autocast(dev: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``dev``, or nothing when ``dtype`` is None."""
    return torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds ``fn`` takes: CUDA events around it on CUDA (after a synchronize), else the wall clock."""
    sync(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    fn()
    return (time.perf_counter() - start_s) * 1e3


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during ``fn`` beyond those alive before it."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    with PeakMemory() as tracker:
        fn()
    return tracker.peak
