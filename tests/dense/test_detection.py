"""fpn_backbone / detector: every family under torchvision's detectors, a training step and eval."""

from __future__ import annotations

import pytest
import torch
from tiny_models import FAMILIES, TINY

from acmix.dense import DETECTORS, detector, fpn_backbone


def _batch(sizes, masks: bool):
    g = torch.Generator().manual_seed(0)
    images, targets = [], []
    for h, w in sizes:
        images.append(torch.rand(3, h, w, generator=g))
        boxes = torch.tensor([[2.0, 3.0, w * 0.5, h * 0.6], [w * 0.3, h * 0.2, w - 2.0, h - 1.0]])
        t = {"boxes": boxes, "labels": torch.tensor([1, 2])}
        if masks:
            m = torch.zeros(2, h, w, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                m[i, y0:y1, x0:x1] = 1
            t["masks"] = m
        targets.append(t)
    return images, targets


def _train_and_eval(kind: str, name: str, sizes, min_size: int, max_size: int) -> None:
    torch.manual_seed(0)
    model = detector(kind, name, num_classes=3, out_channels=32, model_kwargs=TINY[name], min_size=min_size,
                     max_size=max_size, size_divisible=1)  # no padding to 32: the backbone sees odd sizes
    images, targets = _batch(sizes, masks=kind == "maskrcnn")
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss), losses
    loss.backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == len(images)
    for o, (h, w) in zip(out, sizes):
        assert o["boxes"].shape[1] == 4 and o["boxes"].shape[0] == o["scores"].shape[0] == o["labels"].shape[0]
        assert torch.isfinite(o["boxes"]).all()
        if len(o["boxes"]):
            assert (o["boxes"][:, 2] <= w + 1e-3).all() and (o["boxes"][:, 3] <= h + 1e-3).all()
        if kind == "maskrcnn":
            assert o["masks"].shape[-2:] == (h, w)


@pytest.mark.parametrize("name", FAMILIES)
def test_fasterrcnn_step_and_eval_odd_sizes(name):
    _train_and_eval("fasterrcnn", name, [(61, 83), (70, 57)], min_size=64, max_size=96)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["maskrcnn", "retinanet", "fcos"])
@pytest.mark.parametrize("name", FAMILIES)
def test_other_detectors(kind, name):
    _train_and_eval(kind, name, [(61, 83), (70, 57)], min_size=64, max_size=96)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(DETECTORS))
@pytest.mark.parametrize("name", FAMILIES)
def test_larger_sizes(kind, name):
    _train_and_eval(kind, name, [(320, 480), (333, 417)], min_size=320, max_size=480)


@pytest.mark.parametrize("name", FAMILIES)
def test_fpn_levels_by_reduction(name):
    bb = fpn_backbone(name, reductions=(8, 16, 32), out_channels=24, extra_blocks="p6p7", **TINY[name])
    assert bb.reductions == (8, 16, 32) and bb.out_channels == 24
    with torch.no_grad():
        out = bb(torch.rand(1, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "p6", "p7"]
    assert [tuple(t.shape[-2:]) for t in out.values()] == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    assert all(t.shape[1] == 24 for t in out.values())


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"reductions \[2\] are not among the model's feature reductions"):
        fpn_backbone("acmix_pvt_tiny", reductions=(2, 4), **TINY["acmix_pvt_tiny"])
    with pytest.raises(ValueError, match=r"extra_blocks='p5'"):
        fpn_backbone("acmix_pvt_tiny", extra_blocks="p5", **TINY["acmix_pvt_tiny"])
    with pytest.raises(ValueError, match=r"kind='yolo' is not one of"):
        detector("yolo", "acmix_pvt_tiny", 3)
    with pytest.raises(ValueError, match=r"^unknown model 'nope'$"):
        fpn_backbone("nope")
    with pytest.raises(ValueError, match=r"^reductions is empty"):
        fpn_backbone("acmix_pvt_tiny", reductions=(), **TINY["acmix_pvt_tiny"])
    with pytest.raises(ValueError, match=r"^out_channels must be a positive int, got 0$"):
        fpn_backbone("acmix_pvt_tiny", out_channels=0, **TINY["acmix_pvt_tiny"])
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match=rf"^num_classes must be an int >= 1 .*, got {bad}$"):
            detector("fasterrcnn", "acmix_pvt_tiny", bad)


def test_model_from_a_local_dir(tmp_path):
    """A ``local-dir:`` (or ``hf-hub:``) name is timm's too: ``timm.is_model`` says no, ``create_model`` reads it."""
    import timm
    from timm.models._hub import save_for_hf

    from acmix.dense import dilatable

    model = timm.create_model("acmix_resnet_tiny")
    save_for_hf(model, tmp_path)
    backbone = fpn_backbone(f"local-dir:{tmp_path}", reductions=(2, 4), out_channels=8, pretrained=True)
    torch.testing.assert_close(backbone.body.stem[0][0].weight, model.stem[0][0].weight)  # the folder's weights
    assert [t.shape[1:] for t in backbone(torch.randn(1, 1, 28, 28)).values()] == [(8, 14, 14), (8, 7, 7), (8, 4, 4)]
    assert dilatable(f"local-dir:{tmp_path}") == dilatable("acmix_resnet_tiny")
