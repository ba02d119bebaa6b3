"""ACmix layers as ``nn.Module``s."""

from .acmix import ACmix
from .replace import replace_convs

__all__ = ["ACmix", "replace_convs"]
