"""Checkpoint files: the one reader, state-dict unwrapper and atomic writer of models and training.

Reading: released training checkpoints are often full training dicts (``model``,
``optimizer``, a pickled config object).  :func:`load_checkpoint_file` never runs
arbitrary pickled code: it tries ``torch.load(weights_only=True)`` first and,
only if that refuses a global, reloads the file with a restricted unpickler that
resolves nothing but the globals in :data:`ALLOWED_GLOBALS` (tensor rebuilding,
``OrderedDict``) and turns every entry of :data:`CONFIG_STUBS` (the yacs
``CfgNode`` of the authors' Swin training script, ``argparse.Namespace``) into a
plain :class:`ConfigStub` dict.  Any other global raises
:class:`pickle.UnpicklingError` naming it.

Writing: :func:`atomic_write` (temporary file in the same folder, fsync,
rename) keeps the previous file when anything fails, the disk filling up
included, and gives the result the folder's usual file mode.

This module imports only torch (safetensors when asked for), so that the
models (``acmix.models``) and training (``acmix.train``) both use it without
depending on each other.
"""

from __future__ import annotations

import _compat_pickle
import errno
import os
import pickle
import shutil
import tempfile
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ALLOWED_GLOBALS",
    "CONFIG_STUBS",
    "WEIGHT_SUFFIXES",
    "CheckpointError",
    "ConfigStub",
    "atomic_save",
    "atomic_write",
    "check_weights_suffix",
    "convert_checkpoint",
    "load_checkpoint_file",
    "save_weights",
    "unwrap_state_dict",
]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, written or used, with the file in the message."""


# --------------------------------------------------------------------------- reading
# Globals a weights-only checkpoint needs (module, name).  Storage classes are
# resolved by torch itself before the unpickler is asked.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
})

# Config classes that training scripts pickle next to the weights; read as plain dicts.
CONFIG_STUBS: frozenset[tuple[str, str]] = frozenset({
    ("yacs.config", "CfgNode"),
    ("argparse", "Namespace"),
})


class ConfigStub(dict[str, Any]):
    """Stands in for a pickled config object: its items, no behaviour, no attributes restored."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict) and not self:  # argparse.Namespace pickles its fields as state
            self.update({k: v for k, v in state.items() if not str(k).startswith("__")})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # protocol 0-2 files name Python 2 modules (``__builtin__``): normalise before checking
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in CONFIG_STUBS:
            return ConfigStub
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to unpickle global {module}.{name}: it is not in acmix.checkpoint_io.ALLOWED_GLOBALS"
        )


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


_restricted_pickle = types.SimpleNamespace(
    __name__="acmix_restricted_pickle", Unpickler=_RestrictedUnpickler, load=_restricted_load
)


def load_checkpoint_file(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> Any:
    """Read a checkpoint file without executing arbitrary pickled code (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device=str(map_location))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass
    # weights_only refused a global: retry with the allow-list (never an unrestricted load)
    return torch.load(path, map_location=map_location, weights_only=False, pickle_module=_restricted_pickle)


def unwrap_state_dict(checkpoint: Any) -> dict[str, Tensor]:
    """The model's state dict inside a checkpoint, in timm's order of preference:
    ``state_dict_ema``/``model_ema``, ``state_dict`` or ``model`` entries are unwrapped;
    DataParallel's ``module.`` prefix and ``torch.compile``'s ``_orig_mod.`` are removed
    from the keys; non-tensor entries (epoch counters, configs) are dropped."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"checkpoint must be a mapping, got {type(checkpoint).__name__}")
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            checkpoint = inner
            break
    return {k.removeprefix("module.").replace("_orig_mod.", ""): v
            for k, v in checkpoint.items() if isinstance(v, Tensor)}


# --------------------------------------------------------------------------- writing
def _file_mode() -> int:
    """The mode ``open()`` gives new files here (0o666 less the umask); ``mkstemp`` would give 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _disk_full(e: BaseException, folder: Path, needed: int) -> bool:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    # torch.save reports a failed write as RuntimeError("... unexpected pos ..."): ask the disk
    return isinstance(e, RuntimeError) and shutil.disk_usage(folder).free < needed + (1 << 20)


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], size_hint: int = 0) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``.

    A failure at any point leaves an existing file at ``path`` untouched and no
    temporary file behind; a full disk raises :class:`CheckpointError` saying so.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (OSError, RuntimeError)) and _disk_full(e, path.parent, size_hint):
            raise CheckpointError(f"no space left on device writing {path} (needed ~{size_hint / 2**20:.0f} MB); "
                                  f"the previous {path.name} is kept") from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), _tensor_bytes(obj))


def check_weights_suffix(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`~pathlib.Path` if its extension is one of :data:`WEIGHT_SUFFIXES`, else one error line."""
    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path}: unknown weights format {path.suffix or '(no extension)'!r}; "
                              f"use one of {', '.join(WEIGHT_SUFFIXES)}")
    return path


def save_weights(sd: Mapping[str, Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None,
                 *, any_suffix: bool = False) -> Path:
    """A state dict (contiguous CPU copies), atomically, in the format the extension names:
    ``.safetensors``, or ``torch.save`` for ``.pth/.pt/.bin`` (for any other with ``any_suffix``)."""
    path = Path(path) if any_suffix else check_weights_suffix(path)
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=metadata), _tensor_bytes(sd))
    return atomic_save(sd, path)


def convert_checkpoint(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> list[str]:
    """Write the model weights of a released checkpoint at ``src`` as a bare state dict at ``dst``.

    ``src`` may be a full training dict (``model``, ``optimizer``, a pickled yacs
    config): it is read with the allow-list of :func:`load_checkpoint_file`, never
    with an unrestricted unpickler.  ``dst`` ending in ``.safetensors`` is written as
    safetensors, anything else with ``torch.save``, atomically (an existing ``dst``
    stays as it was if the write fails).  Returns the keys written.
    """
    state_dict = unwrap_state_dict(load_checkpoint_file(src))
    if not state_dict:
        raise ValueError(f"no tensors found in checkpoint {os.fspath(src)!r}")
    save_weights(state_dict, dst, any_suffix=True)
    return list(state_dict)
