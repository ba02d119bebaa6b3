"""``acmix paper ...`` end to end at the ``--quick`` size: exit code, files written, files parse."""

from __future__ import annotations

import csv
import json

import pytest
import timm
from safetensors.torch import save_file

from acmix.cli.main import main


def _read(folder, name):
    payload = json.loads((folder / f"{name}.json").read_text())
    with (folder / f"{name}.csv").open() as f:
        rows = list(csv.DictReader(f))
    md = (folder / f"{name}.md").read_text()
    assert len(rows) == len(payload["rows"]) and md.startswith("# ") and md.count("\n|") >= len(rows) + 1
    return payload


def test_stage_costs(tmp_path, capsys):
    assert main(["paper", "stage-costs", "--quick", "--device", "cpu", "--out", str(tmp_path / "r50")]) == 0
    payload = _read(tmp_path / "r50", "stage_costs")
    totals = {r["operator"]: r for r in payload["rows"] if r["layer"] == "total"}
    assert set(totals) == {"convolution", "self-attention", "acmix"}
    assert all(0 < r["stage1_time_share"] <= 1 for r in totals.values())
    assert "Stage I" in capsys.readouterr().out
    assert main(["paper", "stage-costs", "--model", "acmix_resnet_tiny", "--no-time",
                 "--out", str(tmp_path / "tiny")]) == 0
    rows = _read(tmp_path / "tiny", "stage_costs")["rows"]
    assert [r["layer"] for r in rows[::3]] == ["stage1.0.acmix", "stage2.0.acmix", "total"]
    assert "stage1_time_share" not in rows[0] and rows[0]["shape"] == "32->32 @14x14"
    assert _read(tmp_path / "tiny", "family_stages")["rows"][-1]["layer"] == "total"
    san = tmp_path / "san"
    assert main(["paper", "stage-costs", "--model", "acmix_san10", "--quick", "--out", str(san)]) == 0
    assert len(_read(san, "family_stages")["rows"]) == 11 and not (san / "stage_costs.md").exists()


def test_shift_speed(tmp_path):
    assert main(["paper", "shift-speed", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    rows = _read(tmp_path, "shift_speed")["rows"]
    assert [r["shift"] for r in rows[:4]] == ["tensor", "fixed", "learnable", "grouped"]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows)
    assert rows[3]["fwd_vs_grouped"] == 1.0


def test_family_speed(tmp_path):
    out = tmp_path / "fam"
    assert main(["paper", "family-speed", "--quick", "--device", "cpu", "--models", "acmix_resnet_tiny",
                 "--out", str(out)]) == 0
    assert _read(out, "family_speed")["rows"][0]["model"] == "acmix_resnet_tiny"


def test_ablation_and_rates(fmnist_dir, tmp_path, capsys):
    out = tmp_path / "abl"
    args = ["paper", "ablation", "--quick", "--variants", "learned", "conv", "--seeds", "1", "--data", str(fmnist_dir),
            "--out", str(out), "--set", "batch_size=8", "opt=adamw"]
    assert main(args) == 0
    table = _read(out, "ablation")["rows"]
    assert [r["variant"] for r in table] == ["learned", "conv"] and table[0]["seeds"] == 1
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["batch_size"] == 8 and recipe["opt"] == "adamw"
    assert _read(out, "rates")["rows"][0]["layer"] == 0
    runs = _read(out, "ablation_runs")["rows"]
    assert "rates" not in json.loads((out / "runs" / "conv" / "seed0" / "result.json").read_text())
    assert {r["variant"] for r in runs} == {"learned", "conv"}
    assert main([*args, "--report-only", "--seeds", "2"]) == 0  # seed 1 not trained: reported from seed 0
    assert "not finished (skipped: report only)" in capsys.readouterr().out
    assert _read(out, "ablation")["rows"][0]["seeds"] == 1
    weights = out / "runs" / "learned" / "seed0" / "model.safetensors"
    other = tmp_path / "swin.safetensors"
    model = timm.create_model("acmix_swin_tiny", embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(other))
    assert main(["paper", "rates", str(weights), str(other), "--labels", "tiny", "swin", "--out",
                 str(tmp_path / "rates")]) == 0
    rows = _read(tmp_path / "rates", "rates")["rows"]
    assert [r["run"] for r in rows].count("swin") == 8 and (tmp_path / "rates" / "rates.png").is_file()
    assert main(["paper", "rates", str(weights), "--labels", "a", "b"]) == 2  # one-line error, exit 2
    assert "--labels has 2 entries" in capsys.readouterr().err


def test_pair_ratios():
    from acmix.analysis.speed import family_pairs, pair_ratios

    assert ("acmix_swin_tiny", "swin_tiny_patch4_window7_224") in family_pairs()
    rows = [{"model": m, "mode": mode, "img_s": s} for m, mode, s in
            (("a", "infer", 30.0), ("b", "infer", 20.0), ("a", "train", 9.0), ("c", "train", 3.0))]
    out = pair_ratios(rows, pairs=[("a", "b"), ("a", "c"), ("a", "d")])
    assert [(r["baseline"], r["mode"], r["speed_vs_baseline"]) for r in out] == [("b", "infer", 1.5),
                                                                               ("c", "train", 3.0)]


def test_bad_values_refused_before_work(tmp_path, capsys):
    """Counts below 1 ran (or silently measured nothing), an unknown --model or --set key and an --out
    that is a file ended in tracebacks; each is now one line, before any work."""
    (tmp_path / "file").write_text("")
    out = ["--out", str(tmp_path / "o")]
    for argv, words in [
        (["stage-costs", "--quick", "--batch", "0", *out], "argument --batch: must be >= 1, got 0"),
        (["stage-costs", "--quick", "--img-size", "0", "--no-time", *out], "argument --img-size: must be >= 1"),
        (["shift-speed", "--quick", "--rounds", "-1", *out], "argument --rounds: must be >= 1, got -1"),
        (["family-speed", "--quick", "--batch-size", "0", *out], "argument --batch-size: must be >= 1"),
        (["ablation", "--quick", "--epochs", "0", *out], "argument --epochs: must be >= 1, got 0"),
        (["ablation", "--quick", "--threads", "-1", *out], "argument --threads: must be >= 0, got -1"),
    ]:
        with pytest.raises(SystemExit):
            main(["paper", *argv])
        assert words in capsys.readouterr().err
    for argv, words in [
        (["stage-costs", "--quick", "--model", "nope", "--no-time", *out], "--model 'nope' is not a registered"),
        (["ablation", "--quick", "--set", "bogus=1", *out], "--set: unknown setting(s) 'bogus'"),
        (["stage-costs", "--quick", "--no-time", "--out", str(tmp_path / "file" / "o")], "is not writable"),
    ]:
        assert main(["paper", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o" / "runs").exists()
