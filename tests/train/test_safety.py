"""Training never destroys work: divergence, an existing output folder, resume checks, saves that fail."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from timm.models import register_model
from train_helpers import TINY_MODEL, tiny_config

from acmix.models.acmix_tiny import ACmixTinyNet, acmix_resnet_tiny
from acmix.train import checkpoint as C
from acmix.train import train
from acmix.train.engine import TrainingDiverged

NAN_AT = {"forward": 8}  # 6 steps per epoch: the second epoch's 2nd step


@register_model
def _acmix_nan_test_net(pretrained: bool = False, **kwargs: Any) -> ACmixTinyNet:
    model = acmix_resnet_tiny(**kwargs)
    calls = [0]

    def hook(module: ACmixTinyNet, args: object, out: torch.Tensor) -> torch.Tensor:
        if module.training:
            calls[0] += 1
            if calls[0] >= NAN_AT["forward"]:
                return out * float("nan")
        return out

    model.register_forward_hook(hook)
    return model


def _cfg(data: Path, out: Path, **over: Any) -> Any:
    return tiny_config(data, out, **{"epochs": 1, **over})


def test_divergence_stops_and_keeps_the_good_files(fmnist_dir: Path, tmp_path: Path) -> None:
    cfg = _cfg(fmnist_dir, tmp_path, model="_acmix_nan_test_net", model_kwargs=dict(TINY_MODEL), epochs=2)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, step 2 .*lower --lr \(now 0.003\)"):
        train(cfg)
    good = C.load_checkpoint(tmp_path / "last.pth")
    assert good["epoch"] == 1 and all(torch.isfinite(v).all() for v in good["model"].values())
    assert (tmp_path / "best.pth").is_file() and not (tmp_path / "model.safetensors").exists()


def test_non_finite_weights_are_never_saved(fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    train(_cfg(fmnist_dir, run_dir, max_steps=2))
    before = (run_dir / "last.pth").read_bytes()
    from acmix.train import engine

    real_step = engine._optimizer_step

    def poisoned_step(run: engine.Run) -> None:
        real_step(run)
        with torch.no_grad():
            next(run.model.parameters()).fill_(float("inf"))

    monkeypatch.setattr(engine, "_optimizer_step", poisoned_step)
    with pytest.raises(TrainingDiverged, match=r"weight .* is not finite"):
        train(_cfg(fmnist_dir, run_dir, resume="auto", max_steps=3))
    assert (run_dir / "last.pth").read_bytes() == before


def test_a_previous_run_is_not_replaced(fmnist_dir: Path, tmp_path: Path) -> None:
    train(_cfg(fmnist_dir, tmp_path, max_steps=1))
    before = (tmp_path / "last.pth").read_bytes()
    with pytest.raises(ValueError, match=r"holds a previous run .*--resume auto.*--overwrite"):
        train(_cfg(fmnist_dir, tmp_path, max_steps=1))
    assert (tmp_path / "last.pth").read_bytes() == before
    (tmp_path / ".last.pth.abc123.tmp").write_bytes(b"x" * 100)  # a save killed midway
    result = train(_cfg(fmnist_dir, tmp_path, max_steps=1, overwrite=True))
    assert result.global_step == 1 and not list(tmp_path.glob(".*.tmp"))
    mode = os.stat(tmp_path / "last.pth").st_mode & 0o777
    assert mode == os.stat(tmp_path / "config.json").st_mode & 0o777  # not mkstemp's 0o600


def test_resume_applies_or_refuses_changed_settings(fmnist_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    train(_cfg(fmnist_dir, tmp_path, max_steps=2, epochs=2))
    last = str(tmp_path / "last.pth")
    with pytest.raises(ValueError, match=r"batch_size 16 -> 8.*must match"):
        train(_cfg(fmnist_dir, tmp_path, resume=last, epochs=2, batch_size=8))
    capsys.readouterr()
    result = train(_cfg(fmnist_dir, tmp_path, resume=last, epochs=3, lr=0.5, weight_decay=0.01, max_steps=3))
    out = capsys.readouterr().out
    assert "applied from here on: epochs 2 -> 3, lr 0.003 -> 0.5, weight_decay 0.05 -> 0.01" in out
    ckpt = C.load_checkpoint(tmp_path / "last.pth")
    groups = ckpt["optimizer"]["param_groups"]
    assert result.global_step == 3 and all(g["initial_lr"] == 0.5 and g["weight_decay"] in (0.0, 0.01) for g in groups)
    assert ckpt["config"]["lr"] == 0.5 and ckpt["scheduler"]["t_initial"] == 3 * 6


def test_resume_from_weights_or_another_model_is_explained(fmnist_dir: Path, tmp_path: Path) -> None:
    train(_cfg(fmnist_dir, tmp_path / "run", max_steps=1))
    sd = C.load_checkpoint(tmp_path / "run" / "last.pth")["model"]
    torch.save(sd, tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "w.safetensors")
    for name in ("bare.pth", "w.safetensors"):
        with pytest.raises(ValueError, match=rf"{name} holds model weights only .*--init-from"):
            train(_cfg(fmnist_dir, tmp_path / "run", resume=str(tmp_path / name)))
    other = dict(TINY_MODEL, widths=[4, 8, 16])
    with pytest.raises(ValueError, match=r"last.pth does not match this model .*shape mismatches \['down"):
        train(_cfg(fmnist_dir, tmp_path / "run", resume=str(tmp_path / "run" / "last.pth"), model_kwargs=other))
    started = train(_cfg(fmnist_dir, tmp_path / "new", init_from=str(tmp_path / "bare.pth"), max_steps=1))
    assert started.global_step == 1


def test_full_disk_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pth"
    C.atomic_save({"w": torch.ones(1000)}, path)

    def full_disk(obj: object, f: str) -> None:
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.torch, "save", full_disk)
    with pytest.raises(C.CheckpointError, match=r"no space left on device writing .*last.pth \(needed ~0 MB\)"):
        C.atomic_save({"w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.equal(C.load_checkpoint(path)["w"], torch.ones(1000)) and os.listdir(tmp_path) == ["last.pth"]


def test_unwritable_output_fails_before_any_work(fmnist_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # a folder below a file cannot be made, even by root
    with pytest.raises(ValueError, match=r"output folder .*file/run is not writable"):
        train(_cfg(fmnist_dir, tmp_path / "file" / "run"))
    assert os.listdir(tmp_path) == ["file"]
