"""Presets (the paper's recipes), flag overrides, validation, lr scaling, optimizer param groups."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import timm
import torch
from timm.optim import create_optimizer_v2

from acmix.cli.main import build_parser
from acmix.cli.train import config_from_args
from acmix.train.config import TrainConfig, effective_lr, list_presets, resolve_config


def _cfg(argv: list[str]) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_packaged_presets_follow_the_paper() -> None:
    assert {"fmnist", "resnet", "san", "swin_t", "swin_s", "pvt"} <= set(list_presets())
    for name in ("resnet", "san"):
        p = resolve_config(name)
        assert (p.opt, p.momentum, p.lr_base, p.lr_base_size, p.sched, p.epochs, p.weight_decay, p.smoothing) == (
            "sgd", 0.9, 0.1, 256, "cosine", 100, 1e-4, 0.1)
    drop = {"swin_t": 0.2, "swin_s": 0.3, "pvt": 0.1}
    for name, rate in drop.items():
        p = resolve_config(name)
        assert (p.opt, p.epochs, p.drop_path_rate, p.weight_decay, p.lr_base, p.lr_base_size) == (
            "adamw", 300, rate, 0.05, 5e-4, 512)
        assert p.warmup_epochs > 0 and timm.is_model(p.model)


def test_flags_override_the_preset() -> None:
    cfg = _cfg(["--preset", "resnet", "--lr", "0.5", "--epochs", "3", "-b", "32", "--no-amp",
                "--model-kwargs", '{"a": 1}', "--scale", "0.5", "1.0"])
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.amp, cfg.model_kwargs, cfg.scale) == (
        0.5, 3, 32, False, {"a": 1}, [0.5, 1.0])
    assert (cfg.opt, cfg.momentum, cfg.channels_last) == ("sgd", 0.9, True)  # untouched preset values
    assert _cfg([]).opt == TrainConfig().opt  # no preset: the defaults


def test_lr_scales_with_the_global_batch() -> None:
    cfg = resolve_config("resnet", {"batch_size": 64, "grad_accum": 2})
    assert effective_lr(cfg, world_size=2) == pytest.approx(0.1 * 256 / 256)
    assert effective_lr(resolve_config("resnet", {"lr": 0.3}), 8) == 0.3


def test_bad_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        resolve_config("nope")
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({"epochs": 2, "learning_rate": 1}))
    with pytest.raises(ValueError, match="'learning_rate'"):
        resolve_config(str(bad))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        resolve_config(None, {"batch_size": 0})
    with pytest.raises(ValueError, match="amp_dtype='fp8'"):
        resolve_config(None, {"amp_dtype": "fp8"})


def test_rates_and_norms_get_no_weight_decay() -> None:
    model = timm.create_model("acmix_resnet_tiny")
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 0.0 if p.ndim <= 1 else 0.05
        assert decay_of[id(p)] == expected, name
    rate = model.stage1[0].acmix.rate1
    assert decay_of[id(rate)] == 0.0 and isinstance(rate, torch.nn.Parameter)


def test_train_checks_a_config_built_in_python(tmp_path: Path) -> None:
    """``train(TrainConfig(...))`` is validated like the command line's (nothing is written before)."""
    from acmix.train import train

    for over, words in [({"epochs": 0}, "epochs must be >= 1, got 0"), ({"smoothing": 2.0}, "smoothing"),
                        ({"lr": float("nan")}, "lr must be finite, got nan")]:
        with pytest.raises(ValueError, match=words):
            train(TrainConfig(**over, output=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()
    with pytest.raises(TypeError, match="cfg must be a TrainConfig, got dict"):
        train({"lr": 0.1})  # type: ignore[arg-type]


def test_train_takes_paths_for_its_path_settings(tmp_path: Path) -> None:
    """``data``/``output`` given as ``Path`` objects run (the Python API's checks take them as strings)."""
    from train_helpers import make_fmnist, tiny_config

    from acmix.train import train

    data = make_fmnist(tmp_path / "data", n_train=16, n_test=8)
    cfg = dataclasses.replace(tiny_config(data, tmp_path, epochs=1, max_steps=1), data=data, output=tmp_path / "o")
    result = train(cfg)
    assert (tmp_path / "o" / "last.pth").is_file() and result is not None
    saved = json.loads((tmp_path / "o" / "config.json").read_text())
    assert (saved["data"], saved["output"]) == (str(data), str(tmp_path / "o"))


def test_build_model_takes_a_local_dir_name(tmp_path: Path) -> None:
    """``local-dir:`` / ``hf-hub:`` names are timm's (``timm.is_model`` says no): training builds them."""
    from timm.models._hub import save_for_hf

    from acmix.train.build import build_model

    model = timm.create_model("acmix_resnet_tiny")
    save_for_hf(model, tmp_path)
    built = build_model(TrainConfig(model=f"local-dir:{tmp_path}", pretrained=True), num_classes=10, in_chans=1)
    torch.testing.assert_close(built.stem[0][0].weight, model.stem[0][0].weight)
    with pytest.raises(ValueError, match="unknown model 'acmix_resnet_nope'"):
        build_model(TrainConfig(model="acmix_resnet_nope"), num_classes=10, in_chans=1)


def test_numpy_scalars_become_python_numbers() -> None:
    """``np.int64`` epochs / ``np.float32`` lr from a Python caller are plain numbers before the checks."""
    import numpy as np

    from acmix.train.config import plain_values, validate

    cfg = plain_values(TrainConfig(epochs=np.int64(3), lr=np.float32(0.5), data=Path("some/where")))
    assert (cfg.epochs, cfg.lr, cfg.data) == (3, 0.5, "some/where")
    assert type(cfg.epochs) is int and type(cfg.lr) is float
    validate(cfg)
