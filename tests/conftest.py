"""Shared test set-up: test helpers on the path, few threads, and the data fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "train")]
torch.set_num_threads(int(os.environ.get("ACMIX_TEST_THREADS", "2")))
# AUTO's measured choice is tested on its own (tests/ops/test_dispatch.py); elsewhere the size rule decides,
# so that the suite does not time paths at every shape nor write to the user's cache.
os.environ.setdefault("ACMIX_AUTOTUNE", "0")

from train_helpers import make_fmnist, make_image_folder  # noqa: E402


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic Fashion-MNIST folder (gzipped IDX files)."""
    return make_fmnist(tmp_path_factory.mktemp("fmnist"))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A small synthetic ImageFolder tree."""
    return make_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def native_kernel():
    """The compiled CPU kernel module (``acmix.ops.native``), built once per session; skips without a compiler."""
    from acmix.ops import native

    if not native.available():
        pytest.skip(f"the compiled CPU kernel cannot be built here ({native._failed})")
    return native
