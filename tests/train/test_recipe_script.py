"""scripts/recipe_from_data.py at a tiny size: the 8×8 tree, both runs, their recipe lines and settings."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import timm
from PIL import Image

from acmix.train import TrainConfig
from acmix.train.data import FMNIST_DIR
from acmix.train.recipe import SMALL_RECIPE

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "recipe_from_data.py"


def test_both_recipes_run_and_say_which(fmnist_dir: Path, tmp_path: Path) -> None:
    # the real Fashion-MNIST when installed (CI: the Debian package), else the synthetic IDX files: never skipped
    source = FMNIST_DIR if Path(FMNIST_DIR).is_dir() else str(fmnist_dir)
    spec = importlib.util.spec_from_file_location("recipe_from_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "result.json"
    script.main(["--train", "40", "--val", "20", "--side", "8", "--epochs", "1", "--batch-size", "16",
                 "--fmnist", source, "--keep", str(tmp_path / "work"), "--json", str(out)])

    for split, per_class in (("train", 4), ("val", 2)):
        folders = sorted((tmp_path / "work" / "data" / split).iterdir())
        assert len(folders) == 10 and all(len(list(f.glob("*.png"))) == per_class for f in folders)
        with Image.open(next(folders[0].glob("*.png"))) as im:
            assert (im.size, im.mode) == ((8, 8), "L")

    chosen, defaults = json.loads(out.read_text())["runs"]
    assert (chosen["recipe"], defaults["recipe"]) == ("chosen from the data", "ImageNet-style defaults")
    assert chosen["line"].startswith("recipe: small-image (data: 8x8 px, 1 channel, 40 training images; "
                                     "at most 64 px: whole images without crops or flips, AdamW lr ")
    assert chosen["settings"] == {**SMALL_RECIPE, "input_size": [3, 8, 8]}
    keys = sorted([*SMALL_RECIPE, "input_size"])
    assert f"kept from the flags: {', '.join(keys)})" in defaults["line"]
    # the forced run has exactly the settings a run without the chooser resolves to
    base = TrainConfig()
    model_cfg = timm.create_model("acmix_resnet_tiny").pretrained_cfg
    expected = {k: getattr(base, k) for k in SMALL_RECIPE}
    expected.update(lr=base.lr_base * 16 / base.lr_base_size, crop_pct=model_cfg["crop_pct"],
                    input_size=[3, *model_cfg["input_size"][1:]])
    assert defaults["settings"] == expected
    for run in (chosen, defaults):
        assert 0.0 <= run["top1"] <= 1.0 and run["minutes"] >= 0.0
