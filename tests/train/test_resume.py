"""Exact resume: N steps + stop + resume + M steps == N + M steps, bit for bit (CPU, deterministic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import tiny_config

from acmix.train import train
from acmix.train.checkpoint import load_checkpoint


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"


OVER = dict(model_ema=True, model_ema_decay=0.9, drop_path_rate=0.1, clip_grad=1.0)


@pytest.fixture(scope="module")
def continuous(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("full")
    full = train(tiny_config(fmnist_dir, out, **OVER))
    assert full.global_step == 12 and full.interrupted is None
    return out


# 96 images / batch 16 = 6 steps per epoch, 2 epochs = 12 steps; stop after 4 (mid-epoch) or 6 (boundary).
@pytest.mark.parametrize("stop_at", [4, 6])
def test_resume_equals_continuous(fmnist_dir: Path, continuous: Path, tmp_path: Path, stop_at: int) -> None:
    over = OVER
    part = train(tiny_config(fmnist_dir, tmp_path / "part", max_steps=stop_at, **over))
    assert part.interrupted == "max_steps" and part.global_step == stop_at
    ckpt = load_checkpoint(tmp_path / "part" / "last.pth")
    assert (ckpt["epoch"], ckpt["step_in_epoch"]) == divmod(stop_at, 6)

    resumed = train(tiny_config(fmnist_dir, tmp_path / "part", resume=str(tmp_path / "part" / "last.pth"), **over))
    assert resumed.global_step == 12 and resumed.epoch == 2
    a, b = load_checkpoint(continuous / "last.pth"), load_checkpoint(tmp_path / "part" / "last.pth")
    _assert_same(a["model"], b["model"])
    _assert_same(a["ema"], b["ema"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["optimizer"]["state"][k][name])), name
    # the metrics files hold each epoch once, with the same numbers
    rows_a = [json.loads(x) for x in (continuous / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_b] == [0, 1]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("train_loss", "val_loss", "val_top1", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-12, abs=1e-12), key


def test_amp_accumulation_mixup_channels_last_run(fmnist_dir: Path, tmp_path: Path) -> None:
    cfg = tiny_config(fmnist_dir, tmp_path, epochs=1, max_steps=2, amp=True, channels_last=True, grad_accum=2,
                      batch_size=8, mixup=0.8, cutmix=1.0, deterministic=False)
    result = train(cfg)
    assert result.global_step == 2 and result.interrupted == "max_steps"
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert ckpt["step_in_epoch"] == 2 and ckpt["scaler"] is None  # bf16 on CPU needs no GradScaler
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
