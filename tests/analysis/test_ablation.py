"""Tab. 6 / 7 ablations: the switched model, the resumable sweep (``--quick``), the summary and verdicts."""

from __future__ import annotations

import json

import pytest
import timm
import torch

from acmix import ACmix
from acmix.analysis.ablation import MODEL, VARIANTS, run_ablation, summarize, verdicts, write_report


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_model_has_each_variants_switches(variant):
    _, combination, shift = VARIANTS[variant]
    model = timm.create_model(MODEL, combination=combination, shift=shift, widths=[4, 8, 8], heads=2,
                              kernel_att=[3, 3])
    layers = [m for m in model.modules() if isinstance(m, ACmix)]
    assert len(layers) == 2
    assert all(m.config.combination.value == combination and m.config.shift.value == shift for m in layers)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_quick_sweep_resumes_and_reports(fmnist_dir, tmp_path, capsys):
    kw = dict(variants=["learned", "grouped"], seeds=2, quick=True,
              overrides={"data": str(fmnist_dir), "threads": 1})
    results = run_ablation(tmp_path, **kw)
    assert len(results) == 2  # grouped shares the learned runs
    out = capsys.readouterr().out
    assert "[1/2 learned seed 0 ETA ?]" in out and "epoch 1/1" in out and "ETA " in out
    for r in results:
        saved = json.loads((tmp_path / "runs" / r["variant"] / f"seed{r['seed']}" / "result.json").read_text())
        assert saved == r and 0 <= r["top1"] <= 1 and r["params"] > 0 and r["macs"] > 0
    assert all(len(r["rates"]) == 2 for r in results)
    # a second call trains nothing
    again = run_ablation(tmp_path, **kw)
    assert again == results and "training" not in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"another recipe \(differs in epochs\)"):
        run_ablation(tmp_path, **{**kw, "overrides": {**kw["overrides"], "epochs": 2}})
    paths = write_report(results, tmp_path, variants=kw["variants"])
    table = json.loads(paths["json"].read_text())["rows"]
    assert [r["variant"] for r in table] == ["learned", "grouped"]
    learned = [100 * r["top1"] for r in results if r["variant"] == "learned"]
    assert table[0]["top1_mean"] == pytest.approx(sum(learned) / 2)
    assert table[1]["top1_mean"] == table[0]["top1_mean"]
    assert paths["png"].stat().st_size > 1000 and (tmp_path / "rates.png").is_file()
    assert "grouped kernels" in paths["md"].read_text()


def test_an_image_folder(image_folder, tmp_path):
    results = run_ablation(tmp_path, variants=["conv"], seeds=1, quick=True,
                           overrides={"data": str(image_folder), "input_size": [3, 16, 16], "batch_size": 4})
    assert results[0]["data"] == str(image_folder) and results[0]["params"] > 0


def test_verdicts():
    def row(variant, mean, std, seeds=3):
        return {"variant": variant, "label": variant, "top1_mean": mean, "top1_std": std, "seeds": seeds}

    lines = verdicts([row("learned", 90.0, 0.2), row("attention", 89.0, 0.3), row("conv", 90.1, 0.3),
                      row("fixed", 91.0, 0.1)])
    assert len(lines) == 3
    assert "attention alone: reproduced" in lines[0]
    assert "convolution alone: not resolved" in lines[1]
    assert "fixed 0.5/0.5: not reproduced" in lines[2]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown ablation variant"):
        run_ablation(tmp_path, variants=["both"])
    with pytest.raises(ValueError, match="seeds must be"):
        run_ablation(tmp_path, seeds=0)
    assert summarize([]) == []
    with pytest.raises(ValueError, match="no finished ablation runs"):
        write_report([], tmp_path)


def test_a_finished_run_without_result_is_reported_from_its_log(fmnist_dir, tmp_path):
    kw = dict(variants=["conv"], seeds=1, quick=True, overrides={"data": str(fmnist_dir)})
    first = run_ablation(tmp_path, **kw)
    (tmp_path / "runs" / "conv" / "seed0" / "result.json").unlink()  # as if stopped right after training
    again = run_ablation(tmp_path, **kw)
    assert again[0]["top1"] == first[0]["top1"] and again[0]["train_seconds"] == first[0]["train_seconds"]
