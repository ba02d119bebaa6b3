"""Detection and instance segmentation on Fashion-MNIST canvases: an ACmix backbone against a ResNet one.

Each canvas holds 1-3 real Fashion-MNIST items pasted at random places (a later
item covers an earlier one); the boxes and masks come from the pasted pixels,
the label is the item's class.  The same Mask R-CNN (torchvision) is trained on
two backbones of similar size: timm's ``resnet18`` with its stage 3x3 convs
replaced by ACmix layers (``acmix.nn.replace.replace_convs``; 4.2M parameters)
and timm's plain ``resnet10t`` (4.9M).  Both are scored with COCO box and mask
mAP (pycocotools) on held-out canvases built from the test split.

    python examples/fmnist_detection.py                 # 300 steps per backbone (see the README for timing)
    python examples/fmnist_detection.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import timm
import torch
from torchvision.models.detection import MaskRCNN

import acmix  # noqa: F401  (registers the acmix_* models)
from acmix.dense import FPNBackbone
from acmix.nn.replace import replace_convs
from acmix.train.data import FMNIST_DIR, FashionMNIST


def make_canvases(images: np.ndarray, labels: np.ndarray, n: int, size: int, seed: int) -> list[dict]:
    """``n`` canvases (float image ``(1, size, size)``, boxes, labels 1-10, masks) from random items."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        canvas = np.zeros((size, size), np.float32)
        owner = np.full((size, size), -1)
        picks = rng.choice(len(images), rng.integers(1, 4), replace=False)
        for i, idx in enumerate(picks):
            y, x = rng.integers(0, size - 28 + 1, 2)
            item = images[idx].astype(np.float32) / 255.0
            on = item > 0.1
            canvas[y:y + 28, x:x + 28][on] = item[on]
            owner[y:y + 28, x:x + 28][on] = i
        boxes, masks, classes = [], [], []
        for i, idx in enumerate(picks):
            m = owner == i
            if m.sum() < 20:  # covered almost entirely by a later item
                continue
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            masks.append(m)
            classes.append(int(labels[idx]) + 1)
        out.append({"image": torch.from_numpy(canvas)[None],
                    "boxes": torch.tensor(boxes, dtype=torch.float32),
                    "labels": torch.tensor(classes, dtype=torch.int64),
                    "masks": torch.from_numpy(np.stack(masks)).to(torch.uint8)})
    return out


def build(backbone: str, *, acmix_convs: bool, size: int, width: int) -> torch.nn.Module:
    body = timm.create_model(backbone, features_only=True, in_chans=1)
    if acmix_convs:  # the stage 3x3 convs (not the stem) become ACmix layers
        replace_convs(body, include=lambda name, conv: not name.startswith("conv1"), heads=4)
    fpn = FPNBackbone(body, (4, 8, 16, 32), out_channels=width, extra_blocks="pool")
    return MaskRCNN(fpn, num_classes=11, min_size=size, max_size=size, image_mean=[0.0], image_std=[1.0],
                    rpn_batch_size_per_image=64, box_batch_size_per_image=128, box_detections_per_img=20)


def coco_map(model: torch.nn.Module, data: list[dict], batch: int) -> dict[str, float]:
    """COCO box and mask AP / AP50 of ``model`` on ``data`` (pycocotools)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for i, d in enumerate(data):
        h, w = d["image"].shape[-2:]
        images.append({"id": i, "height": h, "width": w})
        for b, lab, m in zip(d["boxes"].tolist(), d["labels"].tolist(), d["masks"].numpy()):
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode()
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": lab, "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": float(m.sum()),
                         "segmentation": rle})
    model.eval()
    with torch.no_grad():
        for s in range(0, len(data), batch):
            outs = model([d["image"] for d in data[s:s + batch]])
            for i, o in enumerate(outs, start=s):
                masks = (o["masks"][:, 0] > 0.5).numpy().astype(np.uint8)
                for b, lab, sc, m in zip(o["boxes"].tolist(), o["labels"].tolist(), o["scores"].tolist(), masks):
                    rle = mask_utils.encode(np.asfortranarray(m))
                    rle["counts"] = rle["counts"].decode()
                    results.append({"image_id": i, "category_id": lab, "score": sc, "segmentation": rle,
                                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(1, 11)]}
    gt.createIndex()
    scores = {}
    for kind in ("bbox", "segm"):
        if not results:
            scores[f"{kind}_AP"] = scores[f"{kind}_AP50"] = 0.0
            continue
        ev = COCOeval(gt, gt.loadRes(results), kind)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        scores[f"{kind}_AP"], scores[f"{kind}_AP50"] = float(ev.stats[0]), float(ev.stats[1])
    return scores


def train_and_score(name: str, model: torch.nn.Module, train: list[dict], val: list[dict], args) -> dict:
    torch.manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(args.seed)
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(train), (args.batch,), generator=g).tolist()
        losses = model([train[i]["image"] for i in idx],
                       [{k: train[i][k] for k in ("boxes", "labels", "masks")} for i in idx])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % max(args.steps // 10, 1) == 0 or step == args.steps - 1:
            print(f"[{name}] step {step + 1}/{args.steps} loss {loss.item():.3f}", flush=True)
    train_s = time.perf_counter() - start
    scores = coco_map(model, val, args.batch)
    params = sum(p.numel() for p in model.backbone.body.parameters())
    return {"backbone": name, "backbone_params_m": round(params / 1e6, 3), "train_s": round(train_s, 1), **scores}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=FMNIST_DIR, help="Fashion-MNIST IDX folder")
    p.add_argument("--acmix-backbone", default="resnet18", help="timm ResNet whose stage 3x3 convs ACmix replaces")
    p.add_argument("--baseline", default="resnet10t", help="timm ResNet trained as is")
    p.add_argument("--size", type=int, default=96, help="canvas side")
    p.add_argument("--train", type=int, default=2000, help="training canvases")
    p.add_argument("--val", type=int, default=200, help="test canvases")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--fpn-width", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="write the results here as JSON")
    p.add_argument("--quick", action="store_true", help="tiny smoke setting (64 px, 16 canvases, 2 steps)")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.train, args.val, args.steps, args.batch, args.fpn_width = 64, 16, 4, 2, 2, 16
    train_set, test_set = FashionMNIST(args.data, train=True), FashionMNIST(args.data, train=False)
    train = make_canvases(train_set.images, train_set.labels, args.train, args.size, args.seed)
    val = make_canvases(test_set.images, test_set.labels, args.val, args.size, args.seed + 1)
    results = []
    for backbone, use_acmix in ((args.acmix_backbone, True), (args.baseline, False)):
        torch.manual_seed(args.seed)
        name = f"{backbone}+ACmix" if use_acmix else backbone
        model = build(backbone, acmix_convs=use_acmix, size=args.size, width=args.fpn_width)
        results.append(train_and_score(name, model, train, val, args))
    for r in results:
        print(json.dumps(r))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
