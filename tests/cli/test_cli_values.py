"""Bad CLI values, bad files and data errors in loader workers: one line on stderr, exit code 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from acmix.cli.main import main
from acmix.train import data as data_module

TINY = '{"widths": [4, 8, 8], "heads": 2, "kernel_att": [3, 3]}'


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_bad_option_values(fmnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--data", str(fmnist_dir), "--output", str(tmp_path / "o"), "-j", "0"]
    assert "interpolation='nonsense'" in _error(capsys, [*base, "--interpolation", "nonsense"])
    assert "seed must be in" in _error(capsys, [*base, "--seed", str(10**23)])
    assert "lr must be finite" in _error(capsys, [*base, "--lr", "inf"])
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"epochs": "ten"}))
    assert "epochs must be int, got 'ten'" in _error(capsys, [*base, "--preset", str(preset)])
    assert not (tmp_path / "o").exists()  # nothing was started
    assert "--subset must be >= 0, got -1" in _error(capsys, ["eval", "--model", "acmix_resnet_tiny", "--checkpoint",
                                                              "x.pth", "--subset", "-1"])
    line = _error(capsys, [*base, "--model-kwargs", '{"features_only": true, "out_indices": [7]}'])
    n = len(timm.create_model("acmix_resnet_tiny").feature_info)
    assert "rejected its arguments" in line and f"valid out_indices: 0..{n - 1}" in line
    assert "--model-kwargs num_classes=0 contradicts the data, which has 10 classes" in _error(
        capsys, [*base, "--model-kwargs", '{"num_classes": 0}'])
    assert "--model-kwargs in_chans=3 contradicts the data, which has 1 channels" in _error(
        capsys, [*base, "--model-kwargs", '{"in_chans": 3}'])
    assert "Fashion-MNIST has the splits train, val, test, not 'nope'" in _error(
        capsys, [*base, "--train-split", "nope"])
    assert not (tmp_path / "o" / "last.pth").exists()


def test_bad_files_get_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all")
    torch.save({"model": {"w": torch.ones(1000)}}, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:700])

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    torch.save({"model": {"w": torch.ones(1)}, "x": Evil()}, tmp_path / "evil.pth")
    out = str(tmp_path / "out.pth")
    for name in ("garbage.pth", "cut.pth"):
        for argv in (["convert-swin", str(tmp_path / name), out],
                     ["eval", "--model", "acmix_resnet_tiny", "--checkpoint", str(tmp_path / name)]):
            assert f"{name}: not a readable checkpoint" in _error(capsys, argv)
    for argv in (["convert-swin", str(tmp_path / "evil.pth"), out],
                 ["eval", "--model", "acmix_resnet_tiny", "--checkpoint", str(tmp_path / "evil.pth")],
                 ["export", str(tmp_path / "evil.pth"), out]):
        line = _error(capsys, argv)
        assert "evil.pth: refused" in line and "posix.system" in line and "weights_only=False" not in line
    assert not Path(out).exists()


def test_corrupt_image_in_a_worker_reads_like_in_the_main_process(image_folder: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(data_module, "VERIFY_LIMIT", 0)  # as for a large dataset: no up-front decode
    (image_folder / "train" / "class1" / "bad.png").write_bytes(b"\x89PNG garbage")
    lines = []
    for workers in ("0", "2"):
        argv = ["train", "--model", "acmix_resnet_tiny", "--model-kwargs", TINY, "--data", str(image_folder),
                "--epochs", "1", "-b", "4", "-j", workers, "--output", str(tmp_path / workers)]
        lines.append(_error(capsys, argv))
    assert lines[0] == lines[1] and "bad.png: cannot load sample" in lines[0]


def test_small_images_get_the_small_image_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / split / f"c{c}/{i}.png")
    assert main(["train", "--data", str(tmp_path), "--hflip", "0.25", "--print-config"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("recipe: small-image (data: 8x8 px, 1 channel, 6 training images")
    cfg = json.loads(captured.out)
    assert (cfg["scale"], cfg["input_size"], cfg["opt"], cfg["hflip"]) == ([1.0, 1.0], [3, 8, 8], "adamw", 0.25)
    assert main(["train", "--data", str(tmp_path), "--preset", "resnet", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["scale"] == [0.08, 1.0]  # a preset is taken as given


def test_resume_without_flags_takes_the_checkpoint_settings(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / "d" / split / f"c{c}").mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                    tmp_path / "d" / split / f"c{c}/{i}.png")
    out = str(tmp_path / "run")
    first = ["train", "--data", str(tmp_path / "d"), "--model-kwargs", TINY, "-b", "2", "-j", "0", "--epochs", "2",
             "--output", out, "--no-plot"]
    assert main([*first, "--max-steps", "1"]) == 0
    assert capsys.readouterr().out.startswith("recipe: small-image")
    assert main(["train", "--output", out, "--resume", "auto"]) == 0  # nothing else given: not refused
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"resume: settings not given are those of {out}/last.pth"
    assert any(line.startswith(f"resumed from {out}/last.pth: epoch 0, step 1/3") for line in lines)


def test_export_model_and_convert_checks_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """export-model refuses bad values, models, checkpoints and output folders before exporting (was: torch
    errors after the export, an empty message for a missing checkpoint); convert-swin and eval likewise."""
    (tmp_path / "file").write_text("")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    other = timm.create_model("acmix_resnet_tiny", widths=[4, 8, 8], heads=2, kernel_att=[3, 3])
    torch.save(other.state_dict(), tmp_path / "other.pth")
    base = ["export-model", "acmix_resnet_tiny", "--in-chans", "1", "--exported-program", str(tmp_path / "m.pt2")]
    for extra, words in [
        (["--batch", "0"], "argument --batch: must be >= 1, got 0"),
        (["--in-chans", "-1"], "argument --in-chans: must be >= 1, got -1"),
        (["--rtol", "nan"], "argument --rtol: must be a finite number > 0, got nan"),
        (["--model-kwargs", "[1]"], "argument --model-kwargs: expected a JSON object, got '[1]'"),
    ]:
        with pytest.raises(SystemExit):  # argparse: usage, then one error line
            main([*base, *extra])
        assert capsys.readouterr().err.strip().splitlines()[-1].endswith(words)
    for extra, words in [
        (["--checkpoint", str(tmp_path / "missing.pth")], "--checkpoint '" + str(tmp_path / "missing.pth")),
        (["--checkpoint", str(tmp_path / "garbage.pth")], "garbage.pth: not a readable checkpoint"),
        (["--checkpoint", str(tmp_path / "other.pth")], "other.pth does not match acmix_resnet_tiny: size mismatch"),
        (["--exported-program", str(tmp_path / "file" / "m.pt2")], "output folder " + str(tmp_path / "file")),
    ]:
        assert words in _error(capsys, [*base, *extra])
    assert "unknown model 'nope'" in _error(capsys, ["export-model", "nope", "--onnx", str(tmp_path / "m.onnx")])
    assert "is a file, not a folder" in _error(capsys, ["convert-swin", str(tmp_path / "other.pth"),
                                                         str(tmp_path / "file" / "o.pth")])
    assert "give --checkpoint or --pretrained-file, not both" in _error(
        capsys, ["eval", "--model", "acmix_resnet_tiny", "--checkpoint", str(tmp_path / "other.pth"),
                 "--pretrained-file", str(tmp_path / "other.pth")])
    assert not (tmp_path / "m.pt2").exists()


def test_folders_where_files_belong_are_named(fmnist_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--data", str(fmnist_dir), "--output", str(tmp_path / "o"), "-j", "0", "-b", "16"]
    assert f"preset file '{tmp_path}' is a folder" in _error(capsys, [*base, "--preset", str(tmp_path)])
    assert f"checkpoint '{tmp_path}' is a folder, not a file" in _error(capsys, [*base, "--resume", str(tmp_path)])


def test_models_named_by_a_local_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """export-model and paper stage-costs take timm's ``local-dir:`` names (``timm.is_model`` says no)."""
    from timm.models._hub import save_for_hf

    save_for_hf(timm.create_model("acmix_resnet_tiny"), tmp_path / "m")
    name = f"local-dir:{tmp_path / 'm'}"
    missing = tmp_path / "missing.pth"  # past the name check, the next one: the checkpoint
    err = _error(capsys, ["export-model", name, "--checkpoint", str(missing), "--onnx", str(tmp_path / "m.onnx")])
    assert f"--checkpoint '{missing}' not found" in err
    assert main(["paper", "stage-costs", "--quick", "--no-time", "--model", name, "--out", str(tmp_path / "o")]) == 0
    assert "acmix: Stage I" in capsys.readouterr().out and (tmp_path / "o" / "stage_costs.md").is_file()
