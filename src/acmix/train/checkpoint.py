"""Checkpoints: the one place that reads, unwraps and writes weights for training, eval and export.

Files are read and written by :mod:`acmix.checkpoint_io`, which the models use
too: reading with ``weights_only`` first, then an allow-list that never runs
pickled code (every failure becomes one :class:`CheckpointError` line naming
the file); writing through :func:`atomic_write` (temporary file in the same
folder, fsync, rename), which keeps the previous file when the disk is full and
gives the result the folder's usual file mode.  A checkpoint holds only
tensors and plain containers, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import pickle
import random
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from ..checkpoint_io import (
    WEIGHT_SUFFIXES,
    CheckpointError,
    atomic_save,
    atomic_write,
    check_weights_suffix,
    load_checkpoint_file,
    save_weights,
    unwrap_state_dict,
)

__all__ = ["WEIGHT_SUFFIXES", "CheckpointError", "atomic_save", "atomic_write", "capture_rng",
           "check_weights_suffix", "check_writable", "export_safetensors", "extract_state_dict", "load_checkpoint",
           "load_weights", "read_error", "remove_stale_temps", "restore_rng", "save_weights", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = cast(nn.Module, model._orig_mod)
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


# --------------------------------------------------------------------------- writing
def export_safetensors(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """The model's state dict (contiguous CPU copies) to safetensors, atomically."""
    return save_weights(unwrap(model).state_dict(), path, metadata)


def remove_stale_temps(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Delete the temporary files that killed saves of ``names`` left in ``folder`` (``.NAME.*.tmp``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for name in names for p in folder.glob(f".{name}.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` and write a probe file in it now, before any work that would be lost."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise CheckpointError(f"{what} {folder} is not writable ({e.strerror or e})") from None
    return folder


# --------------------------------------------------------------------------- reading
_GLOBAL = re.compile(r"(?:global|GLOBAL)\s+([\w.]+)")


def read_error(path: str | Path, e: BaseException) -> CheckpointError:
    """One line for a file torch cannot (or must not) read; never torch's advice to disable weights_only."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "refusing" in text:
        found = _GLOBAL.search(text)
        name = found.group(1) if found else "?"
        return CheckpointError(f"{path}: refused: the file needs the Python global {name}, which a weights-only "
                               f"checkpoint never holds (not loaded with weights_only=True; nothing was run)")
    first = next((line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line), "")
    return CheckpointError(f"{path}: not a readable checkpoint (truncated or another format: "
                           f"{type(e).__name__}: {first.split('. ')[0][:120]})")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, a bare state dict or a safetensors file as a dict, or raise one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} " + ("is a folder, not a file" if path.is_dir() else
                                                               "not found"))
    try:
        obj = load_checkpoint_file(path, map_location=map_location)
    except MemoryError:
        raise
    except Exception as e:
        raise read_error(path, e) from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def extract_state_dict(ckpt: Mapping[str, Any], use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The model weights in a checkpoint: ours (``model``/``ema``), common wrappers, or a bare state dict.

    Unwrapping (``module.`` and ``_orig_mod.`` prefixes, non-tensor entries) is the
    models' own :func:`acmix.checkpoint_io.unwrap_state_dict`.
    """
    if use_ema:
        sd = next((ckpt[k] for k in ("ema", "state_dict_ema", "model_ema") if isinstance(ckpt.get(k), Mapping)), None)
        if sd is None:
            raise CheckpointError("--use-ema: the checkpoint has no EMA weights")
    else:
        sd = next((ckpt[k] for k in ("model", "state_dict", "model_state_dict") if isinstance(ckpt.get(k), Mapping)),
                  ckpt)
    out = unwrap_state_dict(sd)
    if not out:
        raise CheckpointError("the checkpoint holds no tensors")
    return out


def load_weights(model: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """Strict load; missing/unexpected keys and shape mismatches become one :class:`CheckpointError`."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    problems = [f"{name} {items[:4]}{'...' if len(items) > 4 else ''}" for name, items in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if items]
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
    model.load_state_dict(sd)


# --------------------------------------------------------------------------- RNG states
def _np_state_to_tensor(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, gauss = state
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "gauss": float(gauss)}


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA RNG states (plain containers and tensors)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": _np_state_to_tensor(cast("tuple[Any, ...]", np.random.get_state())),  # legacy=True: a tuple
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
