"""replace_convs on ultralytics' own YOLOv8n (optional: runs where ultralytics is installed)."""

from __future__ import annotations

import pytest
import torch

from acmix import ACmix
from acmix.nn.replace import replace_convs


@pytest.mark.slow
def test_yolov8n_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks", reason="ultralytics not installed (optional)")
    torch.manual_seed(0)
    model = tasks.DetectionModel("yolov8n.yaml", verbose=False)  # built from the packaged yaml, no download
    backbone = lambda name, conv: name.startswith("model.") and int(name.split(".")[1]) < 10 and conv.in_channels > 3  # noqa: E731
    done = replace_convs(model, include=backbone)
    assert len(done) == 16 and all(isinstance(model.get_submodule(r.name), ACmix) for r in done)
    model.train()
    x = torch.randn(2, 3, 96, 160)  # YOLOv8's neck concatenates upsampled maps: multiples of 32
    feats = model(x)  # training-mode head outputs (a dict or a list of maps, by version)
    feats = [f for f in (feats.values() if isinstance(feats, dict) else feats) if isinstance(f, torch.Tensor)]
    assert feats
    loss = sum(f.float().square().mean() for f in feats)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model(x)[0]
    assert out.shape[:2] == (2, 84) and torch.isfinite(out).all()
    # ultralytics' fuse() folds every Conv unit's BN into its conv unconditionally: with ACmix there it fails,
    # so models with replaced convs run unfused (README: a BN after ACmix cannot be folded exactly).
    with pytest.raises(AttributeError, match="'ACmix' object has no attribute 'weight'"):
        model.fuse()
