"""Atomic checkpoints, weights_only loading, RNG capture, safetensors export."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from acmix.train import checkpoint as C


def test_failed_save_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pth"
    C.atomic_save({"step": 1, "w": torch.ones(3)}, path)

    def dying_save(obj: object, f: str) -> None:
        Path(f).write_bytes(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(C.torch, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        C.atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    ckpt = C.load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]  # no temporary file left behind
    C.atomic_save({"step": 3}, path)
    assert C.load_checkpoint(path)["step"] == 3


def test_loads_are_weights_only(tmp_path: Path) -> None:
    torch.save({"x": Path("a pickled object")}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only=True"):
        C.load_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        C.load_checkpoint(tmp_path / "missing.pth")


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    state = C.capture_rng()
    C.atomic_save({"rng": state}, tmp_path / "r.pth")
    expected = (random.random(), float(np.random.rand()), torch.rand(2))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    C.restore_rng(C.load_checkpoint(tmp_path / "r.pth")["rng"])
    got = (random.random(), float(np.random.rand()), torch.rand(2))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_safetensors_export_round_trip(tmp_path: Path) -> None:
    model = timm.create_model("acmix_resnet_tiny", widths=(4, 8, 8), heads=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    C.export_safetensors(model, tmp_path / "m.safetensors", {"model": "acmix_resnet_tiny"})
    fresh = timm.create_model("acmix_resnet_tiny", widths=(4, 8, 8), heads=2).eval()
    fresh.load_state_dict(load_file(tmp_path / "m.safetensors"))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(model(x), fresh(x))
    sd = C.extract_state_dict({"model": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 1})
    assert sd.keys() == model.state_dict().keys()
