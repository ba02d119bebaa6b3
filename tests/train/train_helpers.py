"""Synthetic datasets and a tiny config for the training and CLI tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from acmix.train import TrainConfig

TINY_MODEL = {"widths": [4, 8, 8], "heads": 2, "kernel_att": [3, 3]}


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_fmnist(root: Path, n_train: int = 96, n_test: int = 40, seed: int = 0) -> Path:
    """Class c is a bright horizontal bar at row 2c+4 on noise: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 6, 4:24] = 250
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def make_image_folder(root: Path, classes: int = 2, per_class: int = 6, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
                img[..., c % 3] = 255
                Image.fromarray(img).save(folder / f"img{i}.png")
    return root


def tiny_config(data: Path, output: Path, **over: object) -> TrainConfig:
    values = dict(model="acmix_resnet_tiny", model_kwargs=dict(TINY_MODEL), data=str(data), dataset="auto",
                  epochs=2, batch_size=16, opt="adamw", lr=3e-3, weight_decay=0.05, smoothing=0.1,
                  scale=[0.8, 1.0], workers=0, output=str(output), seed=3, deterministic=True, log_interval=1000,
                  plot=False)
    values.update(over)
    return TrainConfig(**values)
