"""acmix: the ACmix convolution / self-attention hybrid (Pan et al., CVPR 2022)."""

from .nn import ACmix
from .ops import ACmixConfig, Backend, Combination, ShiftMode, acmix, use_backend

__version__ = "0.1.0"

try:  # registers the acmix_* models in timm; the op and the layer (acmix.ops, acmix.nn) work without timm
    from . import models  # noqa: F401
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] != "timm":
        raise

__all__ = ["ACmix", "ACmixConfig", "Backend", "Combination", "ShiftMode", "acmix", "use_backend"]
