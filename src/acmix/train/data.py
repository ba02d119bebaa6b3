"""Datasets and loaders: Fashion-MNIST (Debian IDX files) and ImageFolder trees.

Everything is checked up front (missing path, empty class folder, unreadable
image) with a message naming the file; a sample that still fails to load later
raises :class:`DataError` naming it instead of a bare worker traceback.
Augmentation randomness is a pure function of ``(seed, epoch, index)``, so it
does not depend on the number of workers and replays exactly after a resume.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, get_worker_info

__all__ = ["FMNIST_DIR", "DataError", "DatasetInfo", "FashionMNIST", "ImageFolderChecked", "SafeDataset",
           "build_loader", "inspect_data", "read_idx"]

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
FMNIST_SPLITS = ("train", "val", "test")  # "val" and "test" are both the 10k test set
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
VERIFY_LIMIT = 20_000  # open every image header up front below this many files


class DataError(ValueError):
    """A dataset problem, with the offending path in the message."""


# --------------------------------------------------------------------------- Fashion-MNIST
def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (``.gz`` or plain) as a numpy array (uint8 data, big-endian header)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(shape)):
        raise DataError(f"{path}: size {len(data)} does not match the IDX shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _idx_path(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root / (stem + '.gz')}: Fashion-MNIST file not found (install the Debian package "
                    f"dataset-fashion-mnist, or point --data at a folder with the IDX files)")


class FashionMNIST(Dataset):
    """Fashion-MNIST from its IDX files: 60,000 train / 10,000 test 28×28 grayscale images."""

    classes = FMNIST_CLASSES

    def __init__(self, root: str | Path = FMNIST_DIR, train: bool = True,
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: Fashion-MNIST folder not found (install the Debian package "
                            f"dataset-fashion-mnist: `make {FMNIST_DIR}` or apt-get install dataset-fashion-mnist)")
        img_path, lbl_path = (_idx_path(root, s) for s in FMNIST_FILES[train])
        self.images = read_idx(img_path)
        self.labels = read_idx(lbl_path).astype(np.int64)
        if self.images.ndim != 3 or self.labels.ndim != 1 or len(self.images) != len(self.labels):
            raise DataError(f"{img_path}: images {self.images.shape} and labels {self.labels.shape} do not match")
        if self.labels.size and self.labels.max() >= len(self.classes):
            raise DataError(f"{lbl_path}: label {int(self.labels.max())} out of range 0..{len(self.classes) - 1}")
        self.files = (str(img_path), str(lbl_path))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return f"{self.files[0]} [image {index}]"

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])  # 2-D uint8: mode "L"
        return (self.transform(img) if self.transform else img), int(self.labels[index])


# --------------------------------------------------------------------------- ImageFolder
def scan_image_folder(root: str | Path, verify: bool | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes and ``(path, class_index)`` samples of ``root/<class>/<image>``, validated.

    ``verify`` opens every image header (default: when there are at most
    ``VERIFY_LIMIT`` files); unreadable files raise :class:`DataError` naming them.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    samples: list[tuple[str, int]] = []
    for idx, cls in enumerate(classes):
        files = sorted(p for p in (root / cls).rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"{root / cls}: empty class folder (no {'/'.join(IMG_EXTENSIONS)} files)")
        samples.extend((str(p), idx) for p in files)
    if verify is None:
        verify = len(samples) <= VERIFY_LIMIT
    for path, _ in samples:
        if Path(path).stat().st_size == 0:
            raise DataError(f"{path}: empty image file")
        if verify:
            try:
                with Image.open(path) as im:
                    im.verify()
            except Exception as e:
                raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    return classes, samples


class ImageFolderChecked(Dataset):
    """``root/<class>/<image>`` as ``(transform(RGB image), class_index)``, validated up front."""

    def __init__(self, root: str | Path, transform: Callable[[Image.Image], Any] | None = None,
                 verify: bool | None = None) -> None:
        self.root = Path(root)
        self.classes, self.samples = scan_image_folder(root, verify)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        with Image.open(path) as im:
            img = im.convert("RGB")
        return (self.transform(img) if self.transform else img), target


# --------------------------------------------------------------------------- dispatch
@dataclass(frozen=True)
class DatasetInfo:
    kind: str  # "fmnist" | "imagefolder"
    root: Path
    num_classes: int
    in_chans: int
    classes: tuple[str, ...]


def inspect_data(data: str, dataset: str = "auto", train_split: str = "train",
                 val_split: str = "val") -> DatasetInfo:
    """What ``--data`` points at: Fashion-MNIST (``fmnist`` or an IDX folder) or an ImageFolder root."""
    if dataset == "fmnist" or (dataset == "auto" and data == "fmnist"):
        root = Path(FMNIST_DIR if data == "fmnist" else data)
        if not root.is_dir():
            FashionMNIST(root)  # raises the install hint
        return DatasetInfo("fmnist", root, 10, 1, FMNIST_CLASSES)
    root = Path(data)
    if not root.exists():
        raise DataError(f"{root}: --data path not found")
    if dataset == "auto" and any(root.glob("train-images-idx3-ubyte*")):
        return DatasetInfo("fmnist", root, 10, 1, FMNIST_CLASSES)
    splits = [root / s for s in (train_split, val_split) if (root / s).is_dir()]
    if not splits:
        raise DataError(f"{root}: expected an ImageFolder tree with {train_split}/ and/or {val_split}/ "
                        f"class folders (or Fashion-MNIST IDX files)")
    classes = sorted(d.name for d in splits[0].iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{splits[0]}: no class folders (expected {splits[0]}/<class>/<image>)")
    return DatasetInfo("imagefolder", root, len(classes), 3, tuple(classes))


def make_dataset(info: DatasetInfo, split: str, train: bool,
                 transform: Callable[[Image.Image], Any] | None) -> Dataset:
    """The split's dataset (Fashion-MNIST: train = the 60k set, anything else = the 10k test set)."""
    if info.kind == "fmnist":
        if split not in FMNIST_SPLITS:
            raise DataError(f"{info.root}: Fashion-MNIST has the splits {', '.join(FMNIST_SPLITS)}, not {split!r}")
        return FashionMNIST(info.root, train=train, transform=transform)
    ds = ImageFolderChecked(info.root / split, transform)
    if tuple(ds.classes) != info.classes:
        raise DataError(f"{info.root / split}: class folders {ds.classes[:5]}... differ from "
                        f"the training split's {list(info.classes[:5])}...")
    return ds


# --------------------------------------------------------------------------- wrapper, sampler, loader
class SafeDataset(Dataset):
    """Per-sample seeded augmentation and errors naming the file.

    Sample ``i`` of epoch ``e`` is transformed with the python and torch RNGs (and
    numpy's with ``seed_numpy``, which RandAugment needs; it costs ~0.15 ms a
    sample) seeded from ``(seed, e, i)``.  In the main process the caller's RNG
    states are restored afterwards.
    """

    def __init__(self, base: Dataset, seed: int = 0, limit: int = 0, seed_numpy: bool = True) -> None:
        self.base = base
        self.seed = seed
        self.seed_numpy = seed_numpy
        self.epoch = 0
        self.length = min(len(base), limit) if limit else len(base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def describe(self, index: int) -> str:
        describe = getattr(self.base, "describe", None)
        return describe(index) if describe else f"sample {index}"

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        sample_seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + index
        restore = get_worker_info() is None
        if restore:
            saved = (random.getstate(), torch.get_rng_state(), np.random.get_state() if self.seed_numpy else None)
        random.seed(sample_seed)
        torch.default_generator.manual_seed(sample_seed)
        if self.seed_numpy:
            np.random.seed(sample_seed % 2**32)
        try:
            return self.base[index]
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.describe(index)}: cannot load sample {index} ({type(e).__name__}: {e})") from e
        finally:
            if restore:
                random.setstate(saved[0])
                torch.set_rng_state(saved[1])
                if saved[2] is not None:
                    np.random.set_state(saved[2])


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (a permutation per ``(seed, epoch)``) that can start mid-epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share (the next epoch starts at 0 again)."""
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start:]
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples - self.start


def build_loader(dataset: SafeDataset, *, batch_size: int, workers: int, train: bool, rank: int = 0,
                 world_size: int = 1, seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """Training: a :class:`ResumableSampler`, full batches.  Evaluation: this rank's strided shard, in order."""
    generator = torch.Generator().manual_seed(seed)  # worker seeds never draw from the global RNG
    common: dict[str, Any] = dict(batch_size=batch_size, num_workers=workers, pin_memory=pin_memory,
                                  generator=generator, persistent_workers=False)
    if train:
        sampler = ResumableSampler(dataset, world_size, rank, seed)
        if sampler.num_samples < batch_size:
            raise DataError(f"training split has {len(dataset)} samples: fewer than one batch of {batch_size} "
                            f"per process ({world_size} process(es)); lower --batch-size")
        return DataLoader(dataset, sampler=sampler, drop_last=True, **common)
    shard = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(shard, shuffle=False, drop_last=False, **common)
