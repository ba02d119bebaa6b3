"""The operator and model benchmarks end to end on tiny settings, their option checks, the GPU suite's syntax."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import timm
import torch

from acmix.analysis import model_bench, op_bench
from acmix.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[2]
TINY = {"widths": [4, 8, 8], "heads": 2, "kernel_att": [3, 3]}
ROW_KEYS = {"model", "mode", "img_s", "ms", "peak_mem_mb", "batch_size", "img_size", "device", "dtype"}


def test_op_bench_writes_both_conv_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "op.json"
    op_bench.main(["--sizes", "4", "--strides", "1", "--rounds", "1", "--batch", "1", "--no-unfold",
                   "--threads", "1", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["batch"] == 1 and row["channels"] == 512 and row["dtype"] == "float32"
    assert row["baseline"] in ("conv3x3", "conv3x3_cl")
    assert {"conv3x3", "conv3x3_cl", "stage1", "eager", "auto"} <= set(row["impl"])
    assert row["auto_backend"] in ("cpu_kernel", "eager")  # what the default dispatch ran
    conv, conv_cl = row["impl"]["conv3x3"], row["impl"]["conv3x3_cl"]
    assert min(conv["fwd_bwd_ratio"], conv_cl["fwd_bwd_ratio"]) == 1.0  # the faster format is the baseline
    assert row["impl"][row["baseline"]]["fwd_bwd_ms"] == min(conv["fwd_bwd_ms"], conv_cl["fwd_bwd_ms"])
    assert f"vs {row['baseline']}" in capsys.readouterr().out


BAD_OP = [
    (["--batch", "0"], "batch must be a positive int, got 0"),
    (["--rounds", "0"], "rounds must be a positive int, got 0"),
    (["--sizes", "9"], "--sizes takes stage indices 1-4, got 9"),
    (["--strides", "0"], "stride must be a positive int, got 0"),
    (["--threads", "-1"], "threads must be an int >= 0, got -1"),
    (["--dtype", "float16"], "dtype='float16' runs on CUDA only"),
    (["--dtype", "float32", "--amp"], "--amp autocasts to bfloat16 or float16, not float32"),
    (["--device", "tpu"], "device='tpu' is not"),
]
if not torch.cuda.is_available():
    BAD_OP.append((["--device", "cuda"], "CUDA is not available"))


@pytest.mark.parametrize(("argv", "message"), BAD_OP)
def test_op_bench_bad_options_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        op_bench.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bench_models_rows() -> None:
    rows = model_bench.bench_models(["acmix_resnet_tiny", "acmix_resnet_tiny@eager"], batch_size=2,
                                    infer_batch_size=3, img_size=28, warmup=0, rounds=1,
                                    model_kwargs={"acmix_resnet_tiny": TINY})
    assert [(r["model"], r["mode"]) for r in rows] == [
        ("acmix_resnet_tiny", "train"), ("acmix_resnet_tiny", "infer"),
        ("acmix_resnet_tiny@eager", "train"), ("acmix_resnet_tiny@eager", "infer")]
    for r in rows:
        assert set(r) >= ROW_KEYS
        assert r["batch_size"] == (2 if r["mode"] == "train" else 3) and r["img_size"] == 28
        assert r["device"] == "cpu" and r["dtype"] == "float32"
        assert r["ms"] > 0 and r["img_s"] == pytest.approx(r["batch_size"] / r["ms"] * 1e3)
    params = sum(p.numel() for p in timm.create_model("acmix_resnet_tiny", **TINY).parameters()) * 4
    train, infer = rows[0], rows[1]
    assert infer["peak_mem_mb"] * 2**20 > params  # the weights, plus what the forward allocates
    assert train["peak_mem_mb"] * 2**20 > 3 * params  # weights, momentum and gradients at least


def test_bench_models_cli_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "models.json"
    assert cli(["bench-models", "--models", "acmix_resnet_tiny:test_resnet", "--img-size", "32", "--batch-size",
                "2", "--rounds", "1", "--warmup", "0", "--threads", "1", "--modes", "infer", "--model-kwargs",
                json.dumps({"acmix_resnet_tiny": TINY}), "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert payload["groups"] == [["test_resnet", "acmix_resnet_tiny"]]
    ref, acmix_row = payload["results"]
    assert ref["model"] == "test_resnet" and ref["img_s_ratio"] == 1.0 and ref["mem_ratio"] == 1.0
    assert acmix_row["ref"] == "test_resnet"
    assert acmix_row["img_s_ratio"] == pytest.approx(acmix_row["img_s"] / ref["img_s"])
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(table) == 4 and table[0].startswith("| model | infer img/s") and "`acmix_resnet_tiny`" in table[3]


def test_groups_from() -> None:
    assert model_bench.groups_from(["all"]) == list(model_bench.FAMILIES.values())
    assert model_bench.groups_from(["resnet"], ("auto", "eager")) == [
        ("resnet50", "conv_resnet50", "acmix_resnet50", "acmix_resnet50@eager")]
    assert model_bench.groups_from(["acmix_san10:san10_patchwise", "resnet18"]) == [
        ("san10_patchwise", "acmix_san10"), ("resnet18",)]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "batch_size must be a positive int, got 0"),
    ({"infer_batch_size": -2}, "infer_batch_size must be a positive int, got -2"),
    ({"rounds": 0}, "rounds must be a positive int, got 0"),
    ({"img_size": 0}, "img_size must be a positive int, got 0"),
    ({"warmup": -1}, "warmup must be an int >= 0, got -1"),
    ({"modes": ("eval",)}, "modes must be a non-empty subset"),
    ({"names": []}, "names must be a non-empty list"),
    ({"names": "acmix_resnet_tiny"}, "names must be a non-empty list"),
    ({"names": ["acmix_resnet_tiny@fast"]}, "backend 'fast' in 'acmix_resnet_tiny@fast' is not one of"),
    ({"names": ["no_such_model"]}, "model 'no_such_model' is not a registered timm model"),
    ({"dtype": "float16"}, "dtype='float16' runs on CUDA only"),
    ({"dtype": "float64"}, "dtype='float64' is not a benchmark setting"),
    ({"device": "cpux"}, "device='cpux' is not"),
])
def test_bench_models_bad_arguments(kwargs: dict, message: str) -> None:
    kwargs = {"names": ["acmix_resnet_tiny"], "batch_size": 1, "img_size": 8, "rounds": 1, "warmup": 0, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        model_bench.bench_models(kwargs.pop("names"), **kwargs)


def test_unwritable_json_is_refused_before_the_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "b.json")
    with pytest.raises(SystemExit):
        op_bench.main(["--batch", "1", "--rounds", "1", "--sizes", "4", "--json", bad])
    assert cli(["bench-models", "--models", "acmix_resnet_tiny", "--img-size", "8", "--json", bad]) == 2
    err = capsys.readouterr()
    assert err.err.count("is a file, not a folder") == 2 and "wrote" not in err.out and "|" not in err.out


@pytest.mark.parametrize(("argv", "message"), [
    (["--rounds", "0"], "rounds must be a positive int, got 0"),
    (["--models", ":resnet50"], "a pair is 'model:reference', got ':resnet50'"),
    (["--backends", "auto", "bogus"], "backend 'bogus'"),
])
def test_bench_models_cli_errors_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["bench-models", "--models", "acmix_resnet_tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_suite_script_syntax() -> None:
    result = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
