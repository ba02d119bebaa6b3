"""``acmix train`` / ``eval`` / ``export`` end to end, and a 2-process torchrun (gloo) run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from acmix.cli.main import main
from acmix.train.checkpoint import load_checkpoint

TINY = '{"widths": [4, 8, 8], "heads": 2, "kernel_att": [3, 3]}'


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "acmix_resnet_tiny", "--model-kwargs", TINY, "--data", str(data), "--epochs", "1",
            "-b", "16", "--opt", "adamw", "--lr", "3e-3", "-j", "0", "--output", str(out), "--seed", "1", *extra]


def _eval_result(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, float]:
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    return {k: float(v) for k, v in (line.split(": ") for line in lines if ": " in line)}


def test_train_then_eval_export(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(_train_args(fmnist_dir, out, "--preset", "fmnist", "--threads", "0")) == 0
    for name in ("config.json", "metrics.jsonl", "metrics.csv", "metrics.png", "last.pth", "best.pth",
                 "model.safetensors"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 1 and config["opt"] == "adamw" and config["lr"] == 3e-3  # flags beat the preset
    assert config["weight_decay"] == 0.05 and config["resolved"]["num_classes"] == 10  # preset value kept
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train_loss", "val_loss", "val_top1", "val_top5", "val_img_per_s", "lr"} <= row.keys()
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")
    capsys.readouterr()

    # our checkpoint: model and data settings come from its config
    res = _eval_result(capsys, ["eval", "--checkpoint", str(out / "last.pth"), "--data", str(fmnist_dir), "-j", "0"])
    assert res["top1"] == pytest.approx(row["val_top1"], abs=1e-9) and res["images"] == 40
    # a bare state dict and a safetensors export need --model (and --model-kwargs)
    sd = load_checkpoint(out / "last.pth")["model"]
    torch.save(sd, tmp_path / "bare.pth")
    assert main(["export", str(out / "last.pth"), str(tmp_path / "exported.safetensors")]) == 0
    assert all(torch.equal(v, load_file(tmp_path / "exported.safetensors")[k]) for k, v in sd.items())
    for flag, weights in (("--checkpoint", "bare.pth"), ("--checkpoint", "exported.safetensors"),
                          ("--pretrained-file", "bare.pth")):
        capsys.readouterr()
        res = _eval_result(capsys, ["eval", "--model", "acmix_resnet_tiny", "--model-kwargs", TINY, flag,
                                    str(tmp_path / weights), "--data", str(fmnist_dir), "-j", "0"])
        assert res["top1"] == pytest.approx(row["val_top1"], abs=1e-9), weights
    # wrong architecture: a clear message, exit code 2
    save_file({"fc.weight": torch.zeros(3, 3)}, tmp_path / "wrong.safetensors")
    code = main(["eval", "--model", "acmix_resnet_tiny", "--checkpoint", str(tmp_path / "wrong.safetensors"),
                 "--data", str(fmnist_dir)])
    assert code == 2 and "does not match acmix_resnet_tiny" in capsys.readouterr().err


def test_bad_data_exits_with_a_named_error(image_folder: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_train_args(tmp_path / "missing", tmp_path / "o")) == 2
    assert "missing: --data path not found" in capsys.readouterr().err
    (image_folder / "train" / "class1" / "bad.png").write_bytes(b"garbage")
    assert main(_train_args(image_folder, tmp_path / "o")) == 2
    assert "bad.png: unreadable image" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_ddp_two_processes(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "acmix",
           *_train_args(image_folder, out, "--epochs", "2", "-b", "3", "--grad-accum", "2", "--input-size", "3", "16",
                        "16", "--deterministic", "--no-plot", "--threads", "1", "--checkpoint-every", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout and proc.stdout.count("epoch 2/2") == 1  # rank 0 logs only
    config = json.loads((out / "config.json").read_text())["resolved"]
    assert config["world_size"] == 2 and config["steps_per_epoch"] == 1  # 12 images / (2 ranks * 3 * 2)
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["global_step"] == 2 and len(ckpt["rng"]) == 2  # both ranks' RNG states
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["val_top1"] >= 0 for r in rows)


def test_bench_subcommand_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--", "--sizes", "4", "--strides", "2", "--rounds", "1", "--batch", "1",
                 "--no-unfold", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["channels"] == 512 and rows[0]["stride"] == 2
    assert {"conv3x3", "stage1", "eager"} <= set(rows[0]["impl"])
    assert "x conv" in capsys.readouterr().out


def test_convert_swin_subcommand(tmp_path: Path) -> None:
    src, dst = tmp_path / "ckpt.pth", tmp_path / "bare.pth"
    torch.save({"model": {"head.weight": torch.ones(2, 3)}, "epoch": 3}, src)
    assert main(["convert-swin", str(src), str(dst)]) == 0
    assert set(torch.load(dst, weights_only=True)) == {"head.weight"}
    assert main(["convert-swin", str(tmp_path / "missing.pth"), str(dst)]) == 2
