"""acmix: the ACmix convolution / self-attention hybrid (Pan et al., CVPR 2022)."""

from . import models  # noqa: F401  (registers the acmix_* timm models)
from .nn import ACmix
from .ops import ACmixConfig, Backend, Combination, ShiftMode, acmix, use_backend

__version__ = "0.1.0"

__all__ = ["ACmix", "ACmixConfig", "Backend", "Combination", "ShiftMode", "acmix", "use_backend"]
