"""Analyses of the paper: cost counting (more to come: stage costs, path weights, speed)."""

from .macs import count_macs

__all__ = ["count_macs"]
