"""Defaults that fit the user's data: without ``--preset``, choose the recipe from what the images are.

The :class:`~acmix.train.TrainConfig` defaults are an ImageNet-style recipe
(random-resized crops down to 8 % of the image, horizontal flips, label
smoothing, SGD).  On small images (a side of at most :data:`SMALL_SIDE` pixels,
e.g. 8×8 or 28×28) that recipe destroys the content: a crop of 8 % of an 8-pixel
image is one pixel.  There the small-image recipe of the ``fmnist`` preset is
used instead (the whole image at its own size, no flips, AdamW), for every
setting the user did not give.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from PIL import Image

from .config import TrainConfig, validate
from .data import IMG_EXTENSIONS, inspect_data

__all__ = ["SMALL_RECIPE", "SMALL_SIDE", "choose_recipe", "describe_images"]

SMALL_SIDE = 64
SMALL_RECIPE: dict[str, Any] = {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0, "crop_pct": 1.0,
                                "smoothing": 0.0, "opt": "adamw", "lr": 4e-3, "weight_decay": 0.05, "min_lr": 1e-5}
SAMPLE = 32  # image headers read to find the size and channels


def describe_images(cfg: TrainConfig) -> tuple[str, int, int, int, int]:
    """``(kind, height, width, channels, training images)`` of ``cfg.data`` (largest of a sample of headers)."""
    info = inspect_data(cfg.data, cfg.dataset, cfg.train_split, cfg.val_split)
    if info.kind == "fmnist":
        return info.kind, 28, 28, 1, 60_000 if cfg.data == "fmnist" else -1
    files = [p for p in (info.root / cfg.train_split).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS]
    h = w = 0
    gray = True
    for path in files[:: max(1, len(files) // SAMPLE)][:SAMPLE]:
        try:
            with Image.open(path) as im:
                w, h = max(w, im.size[0]), max(h, im.size[1])
                gray = gray and im.mode in ("1", "L", "I", "I;16", "F")
        except OSError:
            continue  # the data checks name the bad file later
    return info.kind, h, w, 1 if gray else 3, len(files)


def choose_recipe(cfg: TrainConfig, given: Iterable[str]) -> tuple[TrainConfig, str]:
    """The config with the recipe for its data applied to the settings not in ``given``, and why (one line)."""
    kind, h, w, c, n = describe_images(cfg)
    what = f"{h}x{w} px, {c} channel{'s' if c > 1 else ''}" + (f", {n:,} training images" if n >= 0 else "")
    if max(h, w) == 0 or max(h, w) > SMALL_SIDE:
        return cfg, (f"recipe: ImageNet-style defaults (data: {what}; random-resized crops and flips suit images "
                     f"larger than {SMALL_SIDE} px); --preset chooses another")
    given = set(given)
    recipe = {**SMALL_RECIPE, **({"input_size": [3, h, w]} if kind == "imagefolder" else {})}  # read as RGB
    new = dataclasses.replace(cfg, **{k: v for k, v in recipe.items() if k not in given})
    validate(new)
    kept = sorted(given & recipe.keys())  # the line must not claim AdamW or no crops when flags say otherwise
    how = (f"for the settings not given; kept from the flags: {', '.join(kept)}" if kept else
           f"whole images without crops or flips, AdamW lr {new.lr:g}")
    return new, f"recipe: small-image (data: {what}; at most {SMALL_SIDE} px: {how}); --preset chooses another"
