"""The CLI side of "never lose work": export, divergence exit code, output checks before the work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from acmix.cli.main import main

TINY = '{"widths": [4, 8, 8], "heads": 2, "kernel_att": [3, 3]}'


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", "acmix_resnet_tiny", "--model-kwargs", TINY, "--data", str(data), "--epochs", "1",
            "-b", "16", "--opt", "adamw", "--lr", "3e-3", "-j", "0", "--output", str(out), "--no-plot", *extra]


@pytest.fixture(scope="module")
def run_dir(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(_train(fmnist_dir, out, "--max-steps", "1")) == 0
    return out


def test_export_refuses_its_input_and_writes_the_named_format(run_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    last = run_dir / "last.pth"
    before = last.read_bytes()
    assert main(["export", str(last), str(last)]) == 2
    assert "would overwrite its input" in capsys.readouterr().err and last.read_bytes() == before
    assert main(["export", str(last), str(tmp_path / "w.txt")]) == 2
    assert "unknown weights format '.txt'" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["export", str(last), str(tmp_path / "file" / "w.pth")]) == 2
    assert f"export folder {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err
    assert main(["export", str(last), str(tmp_path / "w.pth")]) == 0
    assert main(["export", str(last), str(tmp_path / "w.safetensors")]) == 0
    as_pth, as_st = torch.load(tmp_path / "w.pth", weights_only=True), load_file(tmp_path / "w.safetensors")
    assert as_pth.keys() == as_st.keys() and all(torch.equal(as_pth[k], as_st[k]) for k in as_st)


def test_rerun_into_a_run_folder_is_refused(run_dir: Path, fmnist_dir: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_train(fmnist_dir, run_dir, "--max-steps", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert "holds a previous run" in err and "--resume auto" in err and "--overwrite" in err
    assert len(err.splitlines()) == 1


def test_divergence_exits_non_zero(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(_train(fmnist_dir, tmp_path / "nan", "--opt", "sgd", "--lr", "1e30", "--max-steps", "3"))
    err = capsys.readouterr().err
    assert code == 3 and "training diverged" in err and "lower --lr (now 1e+30)" in err
    assert not (tmp_path / "nan" / "last.pth").exists()


def test_eval_results_folder_checked_before_the_work(run_dir: Path, fmnist_dir: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    code = main(["eval", "--checkpoint", str(run_dir / "last.pth"), "--data", str(fmnist_dir), "-j", "0",
                 "--results", str(tmp_path / "file" / "r.json")])
    captured = capsys.readouterr()
    assert code == 2 and "--results folder" in captured.err and "top1" not in captured.out
