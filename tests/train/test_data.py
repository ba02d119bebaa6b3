"""Data: IDX reading, up-front validation and errors naming the file, seeded augmentation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import write_idx

from acmix.train.data import (
    DataError,
    FashionMNIST,
    ImageFolderChecked,
    SafeDataset,
    build_loader,
    inspect_data,
    make_dataset,
    read_idx,
)


def test_read_idx_round_trip_and_bad_magic(tmp_path: Path) -> None:
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(DataError, match="bad"):
        read_idx(tmp_path / "bad")


def test_fmnist_reader(fmnist_dir: Path) -> None:
    ds = FashionMNIST(fmnist_dir, train=False)
    assert len(ds) == 40 and ds[0][0].size == (28, 28) and 0 <= ds[0][1] < 10
    assert inspect_data(str(fmnist_dir)).kind == "fmnist"


def test_fmnist_refuses_a_split_it_does_not_have(fmnist_dir: Path) -> None:
    info = inspect_data(str(fmnist_dir))
    assert len(make_dataset(info, "test", False, None)) == len(make_dataset(info, "val", False, None)) == 40
    with pytest.raises(DataError, match="Fashion-MNIST has the splits train, val, test, not 'nope'"):
        make_dataset(info, "nope", False, None)


def test_missing_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        inspect_data(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        FashionMNIST(tmp_path / "no-fmnist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train/"):
        inspect_data(str(tmp_path / "empty"))


def test_empty_class_folder_is_named(image_folder: Path) -> None:
    (image_folder / "train" / "zebra").mkdir()
    with pytest.raises(DataError, match=r"zebra: empty class folder"):
        ImageFolderChecked(image_folder / "train")


def test_corrupt_image_is_named_up_front(image_folder: Path) -> None:
    bad = image_folder / "train" / "class1" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        ImageFolderChecked(image_folder / "train")
    (image_folder / "train" / "class0" / "zero.jpg").write_bytes(b"")
    bad.unlink()
    with pytest.raises(DataError, match=r"zero\.jpg: empty image file"):
        ImageFolderChecked(image_folder / "train")


def test_corrupt_image_in_a_worker_names_the_file(image_folder: Path) -> None:
    bad = image_folder / "train" / "class0" / "late.png"
    good = next((image_folder / "train" / "class0").glob("img0.png"))
    bad.write_bytes(good.read_bytes()[:60])  # valid header, truncated data: passes verify-less scan
    ds = ImageFolderChecked(image_folder / "train", transform=lambda im: torch.zeros(1), verify=False)
    index = [p for p, _ in ds.samples].index(str(bad))
    safe = SafeDataset(ds)
    with pytest.raises(DataError, match=r"late\.png"):
        safe[index]
    loader = build_loader(safe, batch_size=len(ds), workers=1, train=False)
    with pytest.raises(DataError, match=r"late\.png"):
        next(iter(loader))


def test_augmentation_is_seeded_and_leaves_global_rng_alone() -> None:
    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.rand(3) + random.random(), i

    ds = SafeDataset(Noisy(), seed=1)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[2][0]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, ds[2][0]) and not torch.equal(a, ds[3][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[2][0])


def test_resumable_sampler_skips_consumed_samples(fmnist_dir: Path) -> None:
    ds = SafeDataset(FashionMNIST(fmnist_dir, train=True))
    loader = build_loader(ds, batch_size=8, workers=0, train=True, seed=5)
    loader.sampler.set_epoch(3)
    full = list(loader.sampler)
    loader.sampler.set_start(16)
    assert list(loader.sampler) == full[16:] and len(loader) == len(full) // 8 - 2


def test_training_transform_takes_auto_augment_and_interpolation() -> None:
    """RandAugment (the Swin and PVT presets) and the interpolation reach timm's training transform."""
    from torchvision.transforms import InterpolationMode

    from acmix.train.build import build_transform
    from acmix.train.config import TrainConfig

    cfg = TrainConfig(auto_augment="rand-m9-mstd0.5-inc1")
    data = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
            "crop_pct": 1.0}
    steps = build_transform(cfg, data, train=True).transforms
    names = [type(t).__name__ for t in steps]
    assert "RandAugment" in names, names
    assert steps[0].interpolation == InterpolationMode.BICUBIC
    plain = [type(t).__name__ for t in build_transform(TrainConfig(), data, train=True).transforms]
    assert "RandAugment" not in plain
