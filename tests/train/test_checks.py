"""Every training setting is checked before any work, in presets as in flags: one line naming the value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acmix.train.config import resolve_config

BAD = [
    ({"weight_decay": -1.0}, "weight_decay must be >= 0, got -1.0"),
    ({"momentum": 5.0}, r"momentum must be in \[0.0, 1.0\], got 5.0"),
    ({"model_ema_decay": 2.0}, r"model_ema_decay must be in \[0.0, 1.0\], got 2.0"),
    ({"mixup": -1.0}, "mixup must be >= 0, got -1.0"),
    ({"epochs": "ten"}, "epochs must be int, got 'ten'"),
    ({"seed": 10**23}, r"seed must be in \[0, 2\*\*32\), got 100000000000000000000000"),
    ({"interpolation": "nonsense"}, "interpolation='nonsense' is not one of 'bilinear', 'bicubic'"),
    ({"lr": float("inf")}, "lr must be finite, got inf"),
    ({"lr": float("nan")}, "lr must be finite, got nan"),
    ({"opt": "adamm"}, "opt='adamm' is not a timm optimizer; similar: adam"),
    ({"sched": "cosin"}, "sched='cosin' is not one of 'cosine'"),
    ({"hflip": 1.5}, r"hflip must be in \[0.0, 1.0\], got 1.5"),
    ({"amp": "yes"}, "amp must be bool, got 'yes'"),
    ({"input_size": [3, 0, 8]}, r"input_size must be \[C, H, W\] of positive sizes"),
    ({"ratio": [2.0, 1.0]}, r"ratio must be \[min, max\] with 0 < min <= max"),
    ({"crop_pct": 0.0}, r"crop_pct must be in \(0, 1\], got 0.0"),
]


@pytest.mark.parametrize(("values", "message"), BAD, ids=[next(iter(v)) + str(i) for i, (v, _) in enumerate(BAD)])
def test_bad_values_are_named_in_flags_and_presets(values: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_config(None, values)
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps(values).replace("Infinity", '"inf"').replace("NaN", '"nan"'))
    with pytest.raises(ValueError):
        resolve_config(str(preset))


def test_good_values_pass() -> None:
    cfg = resolve_config(None, {"seed": 2**32 - 1, "interpolation": "bicubic", "momentum": 1.0,
                                "opt": "lookahead_adamw", "epochs": 1, "lr": 1e-3})
    assert (cfg.seed, cfg.interpolation, cfg.opt) == (2**32 - 1, "bicubic", "lookahead_adamw")
