"""Helpers shared by the model families: safe checkpoint reading and state-dict unwrapping.

Released training checkpoints are often full training dicts (``model``,
``optimizer``, a pickled config object).  :func:`load_checkpoint_file` never runs
arbitrary pickled code: it tries ``torch.load(weights_only=True)`` first and,
only if that refuses a global, reloads the file with a restricted unpickler that
resolves nothing but the globals in :data:`ALLOWED_GLOBALS` (tensor rebuilding,
``OrderedDict``) and turns every entry of :data:`CONFIG_STUBS` (the yacs
``CfgNode`` of the authors' Swin training script, ``argparse.Namespace``) into a
plain :class:`ConfigStub` dict.  Any other global raises
:class:`pickle.UnpicklingError` naming it.
"""

from __future__ import annotations

import _compat_pickle
import os
import pickle
import types
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ALLOWED_GLOBALS",
    "CONFIG_STUBS",
    "ConfigStub",
    "fill_missing",
    "load_checkpoint_file",
    "unwrap_state_dict",
]

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


class ConfigStub(dict):
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
            f"refusing to unpickle global {module}.{name}: it is not in acmix.models._builder.ALLOWED_GLOBALS"
        )


def _restricted_load(file, **kwargs) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


_restricted_pickle = types.SimpleNamespace(
    __name__="acmix_restricted_pickle", Unpickler=_RestrictedUnpickler, load=_restricted_load
)


def load_checkpoint_file(path: str | os.PathLike, *, map_location: Any = "cpu") -> Any:
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
    """The model's state dict inside a checkpoint: ``state_dict_ema``/``model_ema``, ``state_dict``
    or ``model`` entries are unwrapped, DataParallel's ``module.`` prefix is stripped."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"checkpoint must be a mapping, got {type(checkpoint).__name__}")
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            checkpoint = inner
            break
    out = {}
    for k, v in checkpoint.items():
        if not isinstance(v, Tensor):
            continue  # epoch counters, configs stored beside the weights
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def fill_missing(state_dict: dict[str, Tensor], model: torch.nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    """Add the model's own (initial) tensors for missing keys ending in one of ``suffixes``.

    Used to initialise an ACmix model from weights of its baseline: only the
    ACmix extras may be missing, they keep their initialisation (shift init,
    rates 0.5), and everything else still loads strictly.  Returns the filled keys.
    """
    filled = []
    for k, v in model.state_dict().items():
        if k not in state_dict and k.endswith(suffixes):
            state_dict[k] = v.detach().clone()
            filled.append(k)
    return filled
