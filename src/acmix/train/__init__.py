"""Training and evaluation of ACmix (and any timm) models: ``acmix train`` / ``acmix eval``."""

from .config import TrainConfig, list_presets, load_preset, resolve_config
from .data import DataError
from .engine import TrainResult, train
from .evaluate import evaluate

__all__ = ["DataError", "TrainConfig", "TrainResult", "evaluate", "list_presets", "load_preset", "resolve_config",
           "train"]
