"""Fixtures: a synthetic Fashion-MNIST folder and ImageFolder tree (see train_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))

from train_helpers import make_fmnist, make_image_folder


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")
