"""ACmix layers as ``nn.Module``s."""

from .acmix import ACmix

__all__ = ["ACmix"]
