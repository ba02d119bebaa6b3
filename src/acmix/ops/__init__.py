"""Functional ACmix: the op, its reference, and shared pieces."""

from . import autotune, native
from .common import ACmixWeights, position_grid, reflect_index, shift_kernel
from .config import ACmixConfig, Backend, Combination, ShiftMode
from .functional import acmix, resolve_backend, shift_conv, use_backend
from .reference import acmix_reference
from .unfold import acmix_unfold

__all__ = [
    "ACmixConfig",
    "ACmixWeights",
    "Backend",
    "Combination",
    "ShiftMode",
    "acmix",
    "acmix_reference",
    "acmix_unfold",
    "autotune",
    "native",
    "position_grid",
    "reflect_index",
    "resolve_backend",
    "shift_conv",
    "shift_kernel",
    "use_backend",
]
