"""examples/fmnist_detection.py on its --quick setting (real Fashion-MNIST, when the Debian package is there)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from acmix.train.data import FMNIST_DIR

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fmnist_detection.py"


@pytest.mark.slow
def test_quick_run(tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools (the dev extra) not installed")
    if not Path(FMNIST_DIR).is_dir():
        pytest.skip(f"Fashion-MNIST not installed at {FMNIST_DIR} (Debian package dataset-fashion-mnist)")
    spec = importlib.util.spec_from_file_location("fmnist_detection", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "results.json"
    results = module.main(["--quick", "--output", str(out)])
    assert [r["backbone"] for r in results] == ["resnet18+ACmix", "resnet10t"]
    assert json.loads(out.read_text()) == results
    for r in results:
        assert 0 < r["backbone_params_m"] < 6
        for k in ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50"):
            assert 0.0 <= r[k] <= 1.0


def test_canvases_hold_their_items():
    np = pytest.importorskip("numpy")
    spec = importlib.util.spec_from_file_location("fmnist_detection", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    images = (rng.random((5, 28, 28)) * 255).astype(np.uint8)
    canvases = module.make_canvases(images, np.arange(5), n=6, size=40, seed=0)
    for c in canvases:
        n = len(c["labels"])
        assert 1 <= n <= 3 and c["boxes"].shape == (n, 4) and c["masks"].shape == (n, 40, 40)
        assert ((c["labels"] >= 1) & (c["labels"] <= 5)).all()
        for box, mask in zip(c["boxes"].long().tolist(), c["masks"]):
            x0, y0, x1, y1 = box
            assert mask.sum() == mask[y0:y1, x0:x1].sum() > 0  # the box is the mask's extent
        assert (c["masks"].sum(0) <= 1).all()  # each pixel belongs to one item
