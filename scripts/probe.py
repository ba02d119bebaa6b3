"""Probe: run a table of bad (and a few good) inputs and count what happens to each.

    PYTHONPATH=src python scripts/probe.py [-k SUBSTRING] [-v]

Every entry of :data:`CASES` is a :class:`Case`: a command line (``argv``, run
in-process through ``acmix.cli.main.main``) or a Python ``call``, what it should
do (``"ok"`` or ``"error"``), and optionally a ``check`` that looks at the files
afterwards and returns a problem (a string) when the result is wrong.  Each case
is counted as one of:

* ``ok``: a valid input that did the right thing;
* ``clear error``: a bad input refused with one line (or a ``ValueError``/``TypeError``);
* ``raw traceback``: an exception escaped, or the message ran over several lines;
* ``silent-wrong``: a bad input accepted, or a ``check`` found a wrong result;
* ``valid rejected``: a valid input refused.

To add cases (layer, models, ...), append ``Case`` entries to ``CASES`` (or
build a list in another module and pass it to :func:`run_cases`).  Placeholders
in ``argv``: ``{tmp}`` (a fresh folder per case), ``{ws}`` (the shared
workspace), ``{data}`` (a small Fashion-MNIST-style folder), ``{images}`` (an
ImageFolder tree) and ``{run}`` (a finished tiny training run).

The layer, op, second-derivative and model cases live in ``probe_layer.py``
(next to this script), with ``KNOWN``: the defects left to other owners, which
are counted and printed but do not fail the run.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
import math
import os
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probe_layer

TINY = '{"widths": [4, 8, 8], "heads": 2, "kernel_att": [3, 3]}'
# small settings, so that a bad option that is accepted runs a short benchmark, not the full one
BENCH = ["--batch", "1", "--rounds", "1", "--sizes", "4", "--strides", "1", "--no-unfold", "--threads", "1"]
BENCH_MODELS = ["--models", "acmix_resnet_tiny", "--img-size", "32", "--batch-size", "1", "--rounds", "1",
                "--warmup", "0", "--threads", "1", "--modes", "infer"]
OUTCOMES = ("ok", "clear error", "raw traceback", "silent-wrong", "valid rejected")


@dataclass
class Case:
    name: str
    expect: str  # "ok" | "error"
    argv: list[str] | None = None
    call: Callable[[dict[str, Path]], Any] | None = None
    check: Callable[[dict[str, Path]], str | None] | None = None  # a problem found after the run, or None
    setup: Callable[[dict[str, Path]], None] | None = None


# --------------------------------------------------------------------------- workspace
def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_workspace(root: Path) -> dict[str, Path]:
    """Synthetic data (learnable bars on noise), an ImageFolder tree and one finished tiny run."""
    rng = np.random.default_rng(0)
    data = root / "fmnist"
    data.mkdir(parents=True)
    for prefix, n in (("train", 96), ("t10k", 40)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, size=(n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c + 4: 2 * c + 6, 4:24] = 250
        _write_idx(data / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", labels)
    images = root / "images"
    for split in ("train", "val"):
        for c in range(2):
            (images / split / f"c{c}").mkdir(parents=True)
            for i in range(6):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                    images / split / f"c{c}" / f"{i}.png")
    ws = {"ws": root, "data": data, "images": images, "run": root / "run"}
    code = _run_cli(_train("{run}", "--max-steps", "2"), ws)[0]
    if code != 0:
        raise SystemExit("probe: the reference training run failed; fix that first")
    return ws


def _train(out: str, *extra: str) -> list[str]:
    return ["train", "--model", "acmix_resnet_tiny", "--model-kwargs", TINY, "--data", "{data}", "--epochs", "1",
            "-b", "16", "--opt", "adamw", "--lr", "3e-3", "-j", "0", "--output", out, "--no-plot", *extra]


def _run_cli(argv: list[str], ws: dict[str, Path]) -> tuple[int | None, str, str]:
    """Exit code (None: an exception escaped), stdout, stderr (with the traceback when one escaped)."""
    from acmix.cli.main import main

    for key, value in ws.items():
        argv = [a.replace("{" + key + "}", str(value)) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    code: int | None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
        except Exception:
            traceback.print_exc()
            code = None
    return code, out.getvalue(), err.getvalue()


def classify(case: Case, ws: dict[str, Path]) -> tuple[str, str]:
    """The outcome of one case and the line that shows it."""
    if case.setup:
        case.setup(ws)
    if case.argv is not None:
        code, _, err = _run_cli(case.argv, ws)
        lines = [x for x in err.splitlines() if x.strip() and not x.endswith(" s")]  # drop "train took N s"
        if code is None or "Traceback" in err:
            return "raw traceback", (lines or ["?"])[-1]
        failed, message = code != 0, (lines[-1] if lines else "")
        if failed and len([x for x in lines if "error" in x]) > 1:
            return "raw traceback", message
    else:
        try:
            case.call(ws)  # type: ignore[misc]
            failed, message = False, ""
        except (ValueError, TypeError, FileNotFoundError) as e:
            failed, message = True, f"{type(e).__name__}: {e}"
            if "\n" in str(e).strip():
                return "raw traceback", message.splitlines()[0]
        except probe_layer.Wrong as e:  # the call checked its own result: accepted, but wrong
            return "silent-wrong", f"{e}"
        except Exception as e:
            return "raw traceback", f"{type(e).__name__}: {str(e)[:200]}"
    problem = case.check(ws) if case.check else None
    if problem:
        return "silent-wrong", problem
    if case.expect == "ok":
        return ("valid rejected", message) if failed else ("ok", "")
    return ("clear error", message) if failed else ("silent-wrong", "accepted")


# --------------------------------------------------------------------------- checks
def _finite_or_absent(name: str) -> Callable[[dict[str, Path]], str | None]:
    def check(ws: dict[str, Path]) -> str | None:
        path = ws["tmp"] / name
        if not path.exists():
            return None
        sd = torch.load(path, weights_only=True)["model"]
        return None if all(torch.isfinite(v).all() for v in sd.values()) else f"{name} holds non-finite weights"
    return check


def _unchanged(ws: dict[str, Path]) -> str | None:
    return None if (ws["run"] / "last.pth").read_bytes() == ws["run_bytes"].read_bytes() else "last.pth was replaced"


def _is_torch_file(ws: dict[str, Path]) -> str | None:
    try:
        torch.load(ws["tmp"] / "w.pth", weights_only=True)
    except Exception:
        return "w.pth is not a torch.save file"
    return None


def _evil(ws: dict[str, Path]) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo probe-pwned",))
    torch.save({"model": {"w": torch.ones(1)}, "x": Evil()}, ws["tmp"] / "evil.pth")


def _bare(ws: dict[str, Path]) -> None:
    torch.save(torch.load(ws["run"] / "last.pth", weights_only=True)["model"], ws["tmp"] / "bare.pth")


def _copy_run(ws: dict[str, Path]) -> None:
    import shutil
    shutil.copytree(ws["run"], ws["tmp"] / "run")


def _preset(text: str) -> Callable[[dict[str, Path]], None]:
    return lambda ws: (ws["tmp"] / "p.json").write_text(text)


def _files(ws: dict[str, Path]) -> None:
    (ws["tmp"] / "garbage.pth").write_bytes(b"not a checkpoint")
    (ws["tmp"] / "cut.pth").write_bytes((ws["run"] / "last.pth").read_bytes()[:4096])
    (ws["tmp"] / "file").write_text("")


def _bad_image(ws: dict[str, Path]) -> None:
    from acmix.train import data
    data.VERIFY_LIMIT = 0  # as for a large dataset: the decode error happens in a worker (keep this case last)
    (ws["images"] / "train" / "c1" / "bad.png").write_bytes(b"\x89PNG garbage")


def _full_disk_save(ws: dict[str, Path]) -> None:
    """A save onto a full disk (a fake ``torch.save`` raising ENOSPC) over an existing checkpoint."""
    import errno
    from unittest import mock

    from acmix.train import checkpoint as C
    path = ws["tmp"] / "last.pth"
    C.atomic_save({"w": torch.ones(3)}, path)

    def full(obj: object, f: str) -> None:
        Path(f).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch.object(C.torch, "save", full):
        C.atomic_save({"w": torch.zeros(3)}, path)


def _old_kept(ws: dict[str, Path]) -> str | None:
    ok = torch.equal(torch.load(ws["tmp"] / "last.pth", weights_only=True)["w"], torch.ones(3))
    left = [p.name for p in ws["tmp"].iterdir() if p.name != "last.pth"]
    return None if ok and not left else f"old checkpoint lost or temporary files left: {left}"


def _stale_temp(ws: dict[str, Path]) -> None:
    _copy_run(ws)
    (ws["tmp"] / "run" / ".last.pth.k1ll3d.tmp").write_bytes(b"x" * 1000)


def _no_temp(ws: dict[str, Path]) -> str | None:
    left = list((ws["tmp"] / "run").glob(".*.tmp"))
    return f"{len(left)} temporary file(s) left" if left else None


def _eval(*extra: str) -> list[str]:
    return ["eval", "--checkpoint", "{run}/last.pth", "--data", "{data}", "-j", "0", *extra]


def _train_api(**over: Any) -> Callable[[dict[str, Path]], Any]:
    """``acmix.train.train`` on a ``TrainConfig`` built in Python, the tiny model on the workspace data."""
    def call(ws: dict[str, Path]) -> Any:
        from acmix.train import TrainConfig, train

        base = {"model": "acmix_resnet_tiny", "model_kwargs": json.loads(TINY), "data": str(ws["data"]),
                "epochs": 1, "batch_size": 16, "workers": 0, "plot": False, "output": str(ws["tmp"] / "o")}
        return train(TrainConfig(**{**base, **over}))
    return call


def _resolve(over: dict[str, Any]) -> Any:
    from acmix.train import resolve_config

    return resolve_config(overrides=over)


def _short(argv: list[str]) -> str:
    """A case name from its command line, without the placeholder folders."""
    return " ".join(a.replace("{tmp}/", "").replace("{run}/", "") for a in argv)


def _export_model(*extra: str) -> list[str]:
    return ["export-model", "acmix_resnet_tiny", "--model-kwargs", TINY, "--in-chans", "1", "--size", "16x16",
            "--check-size", "20x12", *extra]


CASES: list[Case] = [
    # training must never destroy work
    Case("rerun into a run folder", "error", _train("{run}"), check=_unchanged),
    Case("--lr 1e30 diverges", "error", _train("{tmp}/o", "--opt", "sgd", "--lr", "1e30"),
         check=_finite_or_absent("o/last.pth")),
    Case("--lr inf", "error", _train("{tmp}/o", "--lr", "inf")),
    Case("resume with another --batch-size", "error", _train("{tmp}/run", "--resume", "auto", "-b", "8"),
         setup=_copy_run),
    Case("resume with another --lr", "ok", _train("{tmp}/run", "--resume", "auto", "--lr", "1e-3",
                                                  "--max-steps", "3"), setup=_copy_run),
    Case("resume from a bare state dict", "error", _train("{tmp}/o", "--resume", "{tmp}/bare.pth"), setup=_bare),
    Case("resume another model's checkpoint", "error",
         _train("{tmp}/run", "--resume", "auto", "--model-kwargs", '{"widths": [4, 8, 16], "heads": 2}'),
         setup=_copy_run),
    Case("start from weights (--init-from)", "ok",
         _train("{tmp}/o", "--init-from", "{tmp}/bare.pth", "--max-steps", "1"), setup=_bare),
    Case("save onto a full disk", "error", call=_full_disk_save, check=_old_kept),
    Case("stale temp file of a killed save", "ok", _train("{tmp}/run", "--resume", "auto", "--max-steps", "3"),
         setup=_stale_temp, check=_no_temp),
    Case("export onto its input", "error", ["export", "{tmp}/run/last.pth", "{tmp}/run/last.pth"], setup=_copy_run),
    Case("export to .pth writes torch format", "ok", ["export", "{run}/last.pth", "{tmp}/w.pth"],
         check=_is_torch_file),
    Case("export to .txt", "error", ["export", "{run}/last.pth", "{tmp}/w.txt"]),
    Case("unwritable --output", "error", _train("{tmp}/file/o"), setup=_files),
    Case("unwritable eval --results", "error", _eval("--results", "{tmp}/file/r.json"), setup=_files),
    # CLI values
    *[Case(f"train {flag} {value}", "error", _train("{tmp}/o", flag, value)) for flag, value in (
        ("--weight-decay", "-1"), ("--momentum", "5"), ("--model-ema-decay", "2"), ("--mixup", "-1"),
        ("--seed", str(10**23)), ("--interpolation", "nonsense"), ("--epochs", "0"), ("--hflip", "2"))],
    Case("preset epochs 'ten'", "error",
         ["train", "--data", "{data}", "--output", "{tmp}/o", "--preset", "{tmp}/p.json"],
         setup=_preset('{"epochs": "ten"}')),
    Case("eval --subset -1", "error", _eval("--subset", "-1")),
    Case("eval --batch-size 0", "error", _eval("-b", "0")),
    Case("out_indices out of range", "error",
         _train("{tmp}/o", "--model-kwargs", '{"features_only": true, "out_indices": [7]}')),
    *[Case(f"train {flag} {value}", "error", _train("{tmp}/o", flag, value)) for flag, value in (
        ("--lr", "-1"), ("--lr", "nan"), ("--epochs", "-1"), ("-b", "0"), ("--warmup-epochs", "-1"),
        ("--smoothing", "1.5"), ("--clip-grad", "-1"), ("--cutmix", "-1"), ("--drop-path-rate", "2"),
        ("--drop-rate", "-0.5"), ("--input-size", "0"), ("-j", "-1"), ("--model", "nope"),
        ("--model-kwargs", "notjson"), ("--model-kwargs", "[1]"), ("--model-kwargs", '{"bogus": 1}'),
        ("--model-kwargs", '{"combination": "both"}'), ("--model-kwargs", '{"num_classes": 0}'),
        ("--data", "/nonexistent/acmix"), ("--opt", "nope"), ("--sched", "nope"),
        ("--grad-accum", "0"), ("--train-split", "nope"), ("--scale", "0.5 0.1"), ("--ratio", "-1 1"),
        ("--mean", "0.5 0.5"),
        ("--std", "0 0 0"), ("--re-prob", "2"), ("--mixup-prob", "1.5"), ("--min-lr", "-1"),
        ("--warmup-lr", "inf"), ("--opt-eps", "0"), ("--opt-betas", "0.9 1.5"), ("--crop-pct", "0"),
        ("--threads", "-2"), ("--eval-every", "-1"), ("--log-interval", "0"),
        ("--device", "nonsense"), ("--amp-dtype", "int8"), ("--clip-mode", "nope"),
        ("--train-subset", "-3"), ("--dataset", "nope"), ("--resume", "/nonexistent/x.pth"),
        ("--init-from", "/nonexistent/x.pth"))],
    *[Case(f"train {flag} {value}", "ok", _train("{tmp}/o", flag, value)) for flag, value in (
        ("--max-steps", "0"), ("--checkpoint-every", "0"), ("--model-kwargs", '{"num_classes": 10}'),
        ("--val-split", "test"))],
    *[Case(f"preset {name}", "error", ["train", "--data", "{data}", "--output", "{tmp}/o", "--preset", preset],
           setup=setup) for name, preset, setup in (
        ("missing file", "{tmp}/missing.json", None), ("unknown name", "nope", None),
        ("not JSON", "{tmp}/p.json", _preset("{epochs: 1")), ("a list", "{tmp}/p.json", _preset("[1, 2]")),
        ("unknown key", "{tmp}/p.json", _preset('{"epochz": 3}')),
        ("lr null", "{tmp}/p.json", _preset('{"lr": null}')),
        ("batch_size 1.5", "{tmp}/p.json", _preset('{"batch_size": 1.5}')))],
    *[Case(f"eval {flag} {value}", "error", _eval(flag, value)) for flag, value in (
        ("--input-size", "0"), ("--model", "nope"), ("--num-classes", "0"), ("--split", "nope"),
        ("-j", "-1"), ("--device", "nonsense"), ("--checkpoint", "/nonexistent/x.pth"))],
    *[Case(f"bench {' '.join(extra)}", "error", ["bench", "--", *BENCH, *extra], setup=_files) for extra in (
        ("--batch", "0"), ("--rounds", "0"), ("--sizes", "9"), ("--sizes", "0"), ("--strides", "0"),
        ("--device", "nonsense"), ("--threads", "-1"), ("--dtype", "float8"), ("--batch", "x"),
        ("--json", "{tmp}/file/b.json"))],
    *[Case(f"bench-models {' '.join(extra)}", "error", ["bench-models", *BENCH_MODELS, *extra],
           setup=_files) for extra in (
        ("--batch-size", "0"), ("--infer-batch-size", "0"), ("--rounds", "0"), ("--warmup", "-1"),
        ("--img-size", "0"), ("--models", "nope"), ("--backends", "nope"), ("--model-kwargs", "[1]"),
        ("--model-kwargs", "notjson"), ("--threads", "-1"), ("--device", "nonsense"), ("--modes", "nope"),
        ("--json", "{tmp}/file/b.json"))],
    *[Case(f"{name}", "error", argv, setup=_files) for name, argv in (
        ("export a missing file", ["export", "{tmp}/missing.pth", "{tmp}/o.safetensors"]),
        ("export garbage", ["export", "{tmp}/garbage.pth", "{tmp}/o.safetensors"]),
        ("export a folder", ["export", "{tmp}", "{tmp}/o.safetensors"]),
        ("export into a missing folder", ["export", "{run}/last.pth", "{tmp}/file/o.safetensors"]),
        ("convert-swin a missing file", ["convert-swin", "{tmp}/missing.pth", "{tmp}/o.pth"]),
        ("convert-swin an empty file", ["convert-swin", "{tmp}/file", "{tmp}/o.pth"]),
        ("convert-swin onto its input", ["convert-swin", "{tmp}/garbage.pth", "{tmp}/garbage.pth"]),
        ("eval a garbage checkpoint", _eval("--checkpoint", "{tmp}/garbage.pth")),
        ("eval a truncated checkpoint", _eval("--checkpoint", "{tmp}/cut.pth")),
        ("train --init-from garbage", _train("{tmp}/o", "--init-from", "{tmp}/garbage.pth")),
        ("train --resume truncated", _train("{tmp}/o", "--resume", "{tmp}/cut.pth")))],
    # files
    *[Case(f"{cmd} {name}", "error", argv, setup=setup) for cmd, name, argv, setup in (
        ("convert-swin", "garbage", ["convert-swin", "{tmp}/garbage.pth", "{tmp}/o.pth"], _files),
        ("convert-swin", "truncated", ["convert-swin", "{tmp}/cut.pth", "{tmp}/o.pth"], _files),
        ("convert-swin", "malicious", ["convert-swin", "{tmp}/evil.pth", "{tmp}/o.pth"], _evil),
        ("eval", "malicious", ["eval", "--model", "acmix_resnet_tiny", "--checkpoint", "{tmp}/evil.pth"], _evil),
        ("eval --pretrained-file", "malicious",
         ["eval", "--model", "acmix_swin_tiny", "--pretrained-file", "{tmp}/evil.pth"], _evil),
        ("export", "truncated", ["export", "{tmp}/cut.pth", "{tmp}/o.safetensors"], _files))],
    # second probe: export-model, paper, convert-swin, eval and train values not covered above
    *[Case(f"export-model {name}", "error", _export_model(*extra), setup=_files) for name, extra in (
        ("with nothing to write", ()), ("--onnx m.txt", ("--onnx", "{tmp}/m.txt")),
        ("--size 0x4", ("--size", "0x4")), ("--size abc", ("--size", "abc")),
        ("--batch 0", ("--batch", "0", "--exported-program", "{tmp}/m.pt2")),
        ("--batch -1", ("--batch", "-1", "--exported-program", "{tmp}/m.pt2")),
        ("--in-chans 0", ("--in-chans", "0", "--exported-program", "{tmp}/m.pt2")),
        ("--rtol -1", ("--rtol", "-1", "--exported-program", "{tmp}/m.pt2")),
        ("--rtol nan", ("--rtol", "nan", "--exported-program", "{tmp}/m.pt2")),
        ("--model-kwargs notjson", ("--model-kwargs", "notjson", "--exported-program", "{tmp}/m.pt2")),
        ("--model-kwargs [1]", ("--model-kwargs", "[1]", "--exported-program", "{tmp}/m.pt2")),
        ("--checkpoint missing", ("--checkpoint", "{tmp}/missing.pth", "--exported-program", "{tmp}/m.pt2")),
        ("--checkpoint garbage", ("--checkpoint", "{tmp}/garbage.pth", "--exported-program", "{tmp}/m.pt2")),
        ("into a folder that is a file", ("--exported-program", "{tmp}/file/m.pt2")))],
    Case("export-model unknown model", "error", ["export-model", "nope", "--exported-program", "{tmp}/m.pt2"]),
    Case("export-model --checkpoint of another model", "error",
         ["export-model", "acmix_resnet_tiny", "--in-chans", "1", "--size", "16x16", "--checkpoint", "{run}/last.pth",
          "--exported-program", "{tmp}/m.pt2"]),
    Case("export-model --checkpoint of a finished run", "ok",
         _export_model("--checkpoint", "{run}/last.pth", "--exported-program", "{tmp}/m.pt2")),
    Case("paper rates of a finished run", "ok", ["paper", "rates", "{run}/last.pth", "--out", "{tmp}/o"]),
    *[Case(f"paper {_short(argv)}", "error", ["paper", *argv, "--out", "{tmp}/o"], setup=_files)
      for argv in (
        ["rates", "{tmp}/missing.pth"], ["rates", "{tmp}/garbage.pth"],
        ["rates", "{run}/last.pth", "--labels", "a", "b"],
        ["stage-costs", "--quick", "--batch", "0"], ["stage-costs", "--quick", "--rounds", "0"],
        ["stage-costs", "--quick", "--model", "nope"], ["stage-costs", "--quick", "--img-size", "0", "--no-time"],
        ["stage-costs", "--quick", "--device", "nonsense"], ["shift-speed", "--quick", "--batch", "0"],
        ["shift-speed", "--quick", "--rounds", "-1"], ["family-speed", "--quick", "--models", "nope"],
        ["family-speed", "--quick", "--batch-size", "0"], ["family-speed", "--quick", "--img-size", "-5"],
        ["ablation", "--quick", "--variants", "nope"], ["ablation", "--quick", "--seeds", "0"],
        ["ablation", "--quick", "--epochs", "0", "--data", "{data}"],
        ["ablation", "--quick", "--threads", "-1", "--data", "{data}"],
        ["ablation", "--quick", "--set", "bogus=1", "--data", "{data}"],
        ["ablation", "--quick", "--set", "lr=-1", "--data", "{data}"],
        ["ablation", "--quick", "--set", "noequals", "--data", "{data}"],
        ["ablation", "--quick", "--data", "/nonexistent/acmix"], ["ablation", "--report-only"])],
    *[Case(f"paper {cmd} --out into a file", "error", ["paper", *argv, "--out", "{tmp}/file/o"], setup=_files)
      for cmd, argv in (("rates", ["rates", "{run}/last.pth"]),
                        ("stage-costs", ["stage-costs", "--quick", "--no-time"]))],
    Case("convert-swin a plain run checkpoint (unwrapped as any)", "ok",
         ["convert-swin", "{run}/last.pth", "{tmp}/o.pth"]),
    Case("convert-swin into a folder that is a file", "error", ["convert-swin", "{run}/last.pth", "{tmp}/file/o.pth"],
         setup=_files),
    *[Case(f"eval {name}", "error", argv, setup=_files) for name, argv in (
        ("--results into a folder", _eval("--results", "{tmp}")),
        ("--pretrained-file missing", ["eval", "--model", "acmix_resnet_tiny", "--pretrained-file", "{tmp}/missing.pth",
                                       "--data", "{data}"]),
        ("--checkpoint with --pretrained-file", _eval("--pretrained-file", "{run}/last.pth")),
        ("--crop-pct 0 (not an eval flag)", _eval("--crop-pct", "0")),
        ("--model-kwargs with an unknown key", _eval("--model-kwargs", '{"bogus": 1}')),
        ("--batch-size -3", _eval("-b", "-3")))],
    Case("eval --subset 0 (all)", "ok", _eval("--subset", "0")),
    *[Case(f"train {' '.join(extra)}", "error", _train("{tmp}/o", *extra), setup=_files) for extra in (
        ("--input-size", "1", "2"), ("--max-steps", "-1"), ("--checkpoint-every", "-1"), ("--seed", "-1"),
        ("--lr", "0"), ("--model-ema", "--model-ema-decay", "nan"), ("--mixup", "nan"), ("--smoothing", "nan"),
        ("--weight-decay", "inf"), ("--clip-grad", "nan"), ("--drop-path-rate", "nan"), ("--grad-accum", "-1"),
        ("--val-split", "nope"), ("--resume", "{tmp}"))],
    Case("train --output onto a file", "error", _train("{tmp}/file"), setup=_files),
    Case("train --warmup-epochs 5 of 1", "ok", _train("{tmp}/o", "--warmup-epochs", "5", "--max-steps", "1")),
    Case("train --train-subset 0 (all)", "ok", _train("{tmp}/o", "--train-subset", "0", "--max-steps", "1")),
    *[Case(f"preset {name}", "error", ["train", "--data", "{data}", "--output", "{tmp}/o", "--preset", preset],
           setup=setup) for name, preset, setup in (
        ("lr NaN", "{tmp}/p.json", _preset('{"lr": NaN}')), ("lr 'fast'", "{tmp}/p.json", _preset('{"lr": "fast"}')),
        ("model_kwargs a list", "{tmp}/p.json", _preset('{"model_kwargs": [1]}')),
        ("an empty file", "{tmp}/p.json", _preset("")), ("a folder", "{tmp}", None))],
    Case("bench --dtype float16 on the CPU", "error", ["bench", "--", *BENCH, "--dtype", "float16"]),
    Case("bench-models --img-size 7", "ok",
         ["bench-models", *BENCH_MODELS, "--img-size", "7", "--json", "{tmp}/b.json"]),
    Case("bench-models --modes train", "ok", ["bench-models", *BENCH_MODELS[:-2], "--modes", "train", "--json",
                                              "{tmp}/b.json"]),
    *([Case("train --device cuda without CUDA", "error", _train("{tmp}/o", "--device", "cuda")),
       Case("eval --device cuda without CUDA", "error", _eval("--device", "cuda"))] if not torch.cuda.is_available()
      else []),
    # the Python training API: a TrainConfig built by hand, resolve_config's overrides
    *[Case(f"train(TrainConfig({name}))", "error", call=_train_api(**over)) for name, over in (
        ("epochs=0", {"epochs": 0}), ("smoothing=2", {"smoothing": 2.0}), ("lr=nan", {"lr": math.nan}),
        ("lr=-1", {"lr": -1.0}), ("batch_size=0", {"batch_size": 0}), ("opt='nope'", {"opt": "nope"}))],
    Case("train(TrainConfig(max_steps=1))", "ok", call=_train_api(max_steps=1), check=_finite_or_absent("o/last.pth")),
    Case("train() of a dict", "error", call=lambda ws: __import__("acmix.train").train.train({"lr": 0.1})),
    *[Case(f"resolve_config {name}", "error", call=lambda ws, over=over: _resolve(over)) for name, over in (
        ("unknown key", {"bogus": 1}), ("epochs=1.5", {"epochs": 1.5}), ("batch_size=True", {"batch_size": True}),
        ("input_size [1, 28]", {"input_size": [1, 28]}), ("model_kwargs None", {"model_kwargs": None}),
        ("opt_betas [0.9]", {"opt_betas": [0.9]}), ("scale [0.5, 0.1]", {"scale": [0.5, 0.1]}),
        ("mean with nan", {"mean": [math.nan, 0, 0]}))],
    Case("presets", "ok", ["presets"]),
    Case("no subcommand", "error", []),
    Case("unknown subcommand", "error", ["nope"]),
    # data in loader workers
    Case("corrupt image, --workers 2", "error",
         ["train", "--model", "acmix_resnet_tiny", "--model-kwargs", TINY, "--data", "{images}", "--epochs", "1",
          "-b", "4", "-j", "2", "--output", "{tmp}/o"], setup=_bad_image),
]
# the layer, the op, second derivatives and the models (before the corrupt-image case, which must stay last)
CASES[-1:-1] = [Case(name, expect, call=lambda ws, f=f: f()) for name, expect, f in probe_layer.cases()]


def run_cases(cases: list[Case], ws: dict[str, Path], verbose: bool = False) -> Counter[str]:
    counts: Counter[str] = Counter()
    for i, case in enumerate(cases):
        ws["tmp"] = Path(tempfile.mkdtemp(prefix=f"case{i}-", dir=ws["ws"]))
        outcome, line = classify(case, ws)
        counts[outcome] += 1
        if outcome not in ("ok", "clear error") and case.name not in probe_layer.KNOWN:
            counts["unexplained"] += 1
        if verbose or outcome not in ("ok", "clear error"):
            known = f" [known: {probe_layer.KNOWN[case.name]}]" if case.name in probe_layer.KNOWN else ""
            print(f"{outcome:15s} {case.name}: {line[:160]}{known}", flush=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", help="only cases whose name contains this")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every case's outcome and line")
    parser.add_argument("--json", help="also write the counts to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases = [c for c in CASES if not args.k or args.k in c.name]
    with tempfile.TemporaryDirectory(prefix="acmix-probe-") as tmp:
        ws = make_workspace(Path(tmp))
        ws["run_bytes"] = Path(tmp) / "run-last.pth"
        ws["run_bytes"].write_bytes((ws["run"] / "last.pth").read_bytes())
        counts = run_cases(cases, ws, args.verbose)
    total = sum(counts[o] for o in OUTCOMES)  # not the "unexplained" tally
    print(f"{total} cases: " + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES))
    if args.json:
        Path(args.json).write_text(json.dumps({o: counts[o] for o in OUTCOMES}, indent=2) + "\n")
    return 0 if counts["unexplained"] == 0 else 1  # every defect left is listed in probe_layer.KNOWN


if __name__ == "__main__":
    sys.exit(main())
