"""Ctrl-C / SIGTERM during training: save last.pth at the next step, exit cleanly, resume from it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from timm.models import register_model
from train_helpers import TINY_MODEL, tiny_config

from acmix.models.acmix_tiny import ACmixTinyNet, acmix_resnet_tiny
from acmix.train import train
from acmix.train.checkpoint import load_checkpoint

SEND_AT: dict[str, Any] = {"signal": signal.SIGINT, "forward": 3}


@register_model
def _acmix_signal_test_net(pretrained: bool = False, **kwargs: Any) -> ACmixTinyNet:
    model = acmix_resnet_tiny(**kwargs)
    calls = [0]

    def hook(module: ACmixTinyNet, args: object) -> None:
        if module.training:
            calls[0] += 1
            if calls[0] == SEND_AT["forward"]:
                os.kill(os.getpid(), SEND_AT["signal"])

    model.register_forward_pre_hook(hook)
    return model


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_and_stops(fmnist_dir: Path, tmp_path: Path, sig: signal.Signals) -> None:
    SEND_AT["signal"] = sig
    cfg = tiny_config(fmnist_dir, tmp_path, model="_acmix_signal_test_net", model_kwargs=dict(TINY_MODEL),
                      epochs=1)
    handler = signal.getsignal(sig)
    result = train(cfg)
    assert result.interrupted == sig.name and result.global_step == 3
    assert signal.getsignal(sig) is handler  # our handler is removed again
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (0, 3, 3)
    assert not (tmp_path / "model.safetensors").exists()
    SEND_AT["forward"] = -1
    try:
        resumed = train(tiny_config(fmnist_dir, tmp_path, model="_acmix_signal_test_net",
                                    model_kwargs=dict(TINY_MODEL), epochs=1, resume="auto"))
    finally:
        SEND_AT["forward"] = 3
    assert resumed.interrupted is None and resumed.global_step == 6 and (tmp_path / "model.safetensors").is_file()
