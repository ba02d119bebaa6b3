"""The recipe chosen from the data against the ImageNet-style defaults, on 8×8 grayscale Fashion-MNIST.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/recipe_from_data.py [--keep DIR] [--json PATH]

Builds an ImageFolder tree of Fashion-MNIST images downsampled to ``--side``
pixels (area average, grayscale PNGs): a seeded, class-balanced subset of
``--train`` images of the training set and ``--val`` images of the test set.
Then it trains ``--model`` on it twice through ``acmix train`` (in-process,
the same code as the command line), same seed and settings:

* **chosen from the data**: no ``--preset`` and no recipe flag, so the trainer
  picks the small-image recipe (docs/training.md, "The recipe follows the data");
* **ImageNet-style defaults**: every setting the chooser would change is given
  as a flag holding the value the run would have without the chooser, so the
  chooser keeps them all (its line lists them).  The values are read from the
  code, not typed here: the ``TrainConfig`` defaults, the learning rate they
  scale to at this batch size (``effective_lr``), and the input size and
  ``crop_pct`` that ``resolve_data`` takes from the model for an ImageFolder
  tree.  A ``--preset`` holding ``{}`` would give the same settings but skips
  the chooser, so the run would print no recipe line; monkeypatching the
  chooser would not be the trainer a user runs.

Prints a Markdown table (recipe, the trainer's recipe line, final val top-1,
minutes) and writes it as JSON, with each run's recipe settings as saved in
its ``config.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import timm
import torch
from PIL import Image

from acmix.cli import train as train_cmd
from acmix.cli.main import build_parser, dispatch
from acmix.ops import native
from acmix.train.build import resolve_data
from acmix.train.config import effective_lr
from acmix.train.data import FMNIST_CLASSES, FMNIST_DIR, FashionMNIST, inspect_data
from acmix.train.recipe import SMALL_RECIPE

ROOT = Path(__file__).resolve().parents[1]
RECIPE_KEYS = (*SMALL_RECIPE, "input_size")  # what the chooser sets for an ImageFolder tree


def build_tree(root: Path, source: str, n_train: int, n_val: int, side: int, seed: int) -> None:
    """``root/{train,val}/<k>_<class>/<i>.png``: ``n / 10`` seeded images per class, ``side``×``side``."""
    rng = np.random.default_rng(seed)
    for split, n, train in (("train", n_train, True), ("val", n_val, False)):
        ds = FashionMNIST(source, train=train)
        for k, name in enumerate(FMNIST_CLASSES):
            folder = root / split / f"{k}_{re.sub(r'[^a-z]+', '_', name.lower())}"
            folder.mkdir(parents=True, exist_ok=True)
            pick = rng.choice(np.flatnonzero(ds.labels == k), size=n // 10, replace=False)
            for i in sorted(pick):
                img = Image.fromarray(ds.images[i]).resize((side, side), Image.Resampling.BOX)
                img.save(folder / f"{i}.png")


def default_flags(common: list[str], data: Path) -> list[str]:
    """Flags giving each recipe setting the value it has without the chooser (read from the code)."""
    cfg = train_cmd.config_from_args(build_parser().parse_args(["train", *common]))
    info = inspect_data(str(data))
    model = timm.create_model(cfg.model, num_classes=info.num_classes, in_chans=info.in_chans, **cfg.model_kwargs)
    resolved = resolve_data(cfg, model, info)
    values = {**{k: getattr(cfg, k) for k in RECIPE_KEYS}, "lr": effective_lr(cfg, 1),
              "crop_pct": resolved["crop_pct"], "input_size": list(resolved["input_size"])}
    flags: list[str] = []
    for key, value in values.items():
        flags += [f"--{key.replace('_', '-')}", *map(str, value if isinstance(value, list) else [value])]
    return flags


class Tee:
    """Writes to ``stream`` and keeps the lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.text = stream, []

    def write(self, s: str) -> int:
        self.text.append(s)
        return self.stream.write(s)

    def flush(self) -> None:
        self.stream.flush()


def train_once(argv: list[str]) -> tuple[Any, str, float]:
    """``acmix train ARGV`` in-process: the result, the trainer's recipe line, minutes."""
    results: list[Any] = []
    args = build_parser().parse_args(["train", *argv])
    args.func = functools.partial(train_cmd.command, report=lambda r: results.append(r) or 0)
    tee = Tee(sys.stdout)
    start = time.perf_counter()
    with contextlib.redirect_stdout(tee):  # type: ignore[type-var]  # a TextIO in all the ways print uses
        code = dispatch(args)
    minutes = (time.perf_counter() - start) / 60
    if code != 0:
        raise SystemExit(f"acmix train {' '.join(argv)} exited with code {code}")
    line = next(s for s in "".join(tee.text).splitlines() if s.startswith("recipe:"))
    return results[0], line, minutes


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--train", type=int, default=1400, help="training images (a multiple of 10: per class)")
    p.add_argument("--val", type=int, default=400, help="validation images, from the test set (a multiple of 10)")
    p.add_argument("--side", type=int, default=8, help="image side after downsampling, pixels")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--model", default="acmix_resnet_tiny")
    p.add_argument("--seed", type=int, default=42, help="the subset and both runs")
    p.add_argument("--workers", type=int, default=0, help="data loader workers (the results do not depend on it)")
    p.add_argument("--fmnist", default=FMNIST_DIR, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--keep", type=Path, help="build the tree and the runs in DIR and keep them (default: a temp dir)")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/recipe_from_data_cpu.json")
    args = p.parse_args(argv)
    for name in ("train", "val"):
        n = getattr(args, name)
        if n <= 0 or n % 10:
            raise SystemExit(f"--{name} {n}: must be a positive multiple of 10 (the same number per class)")
    if args.side < 1:
        raise SystemExit(f"--side {args.side}: must be at least 1")

    native.available()  # build (or load) the compiled CPU kernel before any clock starts: it is set-up
    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recipe_from_data_")))
        data = work / "data"
        if data.exists():
            raise SystemExit(f"{data} exists: give --keep a new folder")
        build_tree(data, args.fmnist, args.train, args.val, args.side, args.seed)
        common = ["--data", str(data), "--model", args.model, "--epochs", str(args.epochs), "-b",
                  str(args.batch_size), "--seed", str(args.seed), "-j", str(args.workers), "--no-plot"]
        runs = []
        for name, folder, extra in (("chosen from the data", "chosen", []),
                                    ("ImageNet-style defaults", "defaults", default_flags(common, data))):
            out = work / folder
            result, line, minutes = train_once([*common, *extra, "--output", str(out)])
            saved = json.loads((out / "config.json").read_text())
            runs.append({"recipe": name, "line": line, "top1": result.metrics["top1"], "minutes": round(minutes, 2),
                         "flags": extra, "settings": {k: saved[k] for k in RECIPE_KEYS}})

    print("\n| recipe | trainer's line | val top-1 | minutes |\n|---|---|---|---|")
    for r in runs:
        print(f"| {r['recipe']} | `{r['line']}` | {r['top1']:.3f} | {r['minutes']:.1f} |")
    report = {"command": "python scripts/recipe_from_data.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "data": {"train": args.train, "val": args.val, "side": args.side, "source": args.fmnist},
              "model": args.model, "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "runs": runs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.json}")
    return runs


if __name__ == "__main__":
    main()
