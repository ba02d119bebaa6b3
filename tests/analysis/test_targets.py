"""The GPU targets report (``acmix.analysis.targets``) on the real operator benchmark's rows and on model rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acmix.analysis import op_bench, targets


def _model_rows(**img_s: float) -> dict:
    """model_bench-shaped results: ``name__mode=img/s`` (peak memory 100 MB, 150 for acmix_resnet50)."""
    rows = []
    for key, value in img_s.items():
        name, mode = key.rsplit("__", 1)
        name = name.replace("__eager", "@eager")
        rows.append({"model": name, "mode": mode, "img_s": value,
                     "peak_mem_mb": 150.0 if name == "acmix_resnet50" else 100.0})
    return {"device": "test", "results": rows}


def test_layer_lines_from_the_op_benchmark() -> None:
    rows = op_bench.run(batch=1, shapes=[(8, 6)], strides=(1, 2), rounds=1, include_unfold=False, threads=1)
    lines = targets.check({"results": rows}, None)
    layer = [x for x in lines if x.goal.startswith("layer")]
    assert len(layer) == len(targets.LAYER)  # one stride-1 shape: one line per layer goal; stride 2 is not a goal
    auto = rows[0]["impl"]["auto"]
    assert [x.value for x in layer] == [auto["fwd_bwd_ratio"], auto["fwd_ratio"], auto["mem_ratio"]]
    assert all(f"-> {rows[0]['auto_backend']}" in x.case for x in layer)
    assert all(x.verdict == "not measured" for x in lines if not x.goal.startswith("layer"))


def test_model_ratios_and_verdicts() -> None:
    model = _model_rows(acmix_resnet50__train=60, resnet50__train=100, acmix_resnet50__infer=49, resnet50__infer=100,
                        acmix_swin_tiny__train=95, swin_tiny_patch4_window7_224__train=100,
                        acmix_san10__train=30, acmix_san10__eager__train=10)
    lines = {(x.goal, x.case.split(" ")[0]): x for x in targets.check(None, model)}
    train = lines[("train img/s", "`acmix_resnet50`")]
    assert train.value == pytest.approx(0.6) and train.verdict == "met"  # at the target exactly: met
    assert lines[("inference img/s", "`acmix_resnet50`")].verdict == "MISSED"  # 0.49 < 0.5
    memory = lines[("peak training memory", "`acmix_resnet50`")]
    assert memory.value == pytest.approx(1.5) and memory.verdict == "met"  # an upper bound, at the target
    assert lines[("train img/s", "`acmix_swin_tiny`")].verdict == "ambition met"
    assert lines[("train img/s", "`acmix_pvt_tiny`")].verdict == "not measured"  # no rows
    san = lines[("train img/s", "`acmix_san10`")]
    assert san.value == pytest.approx(3.0) and san.verdict == "met"
    table = targets.markdown(list(lines.values()))
    assert "| 0.49× | ≥ 0.5× | ≥ 0.7× | MISSED |" in table and "| ≤ 1.5× | ≤ 1.2× |" in table


def test_cli_table_json_and_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "model.json"
    model.write_text(json.dumps(_model_rows(acmix_pvt_tiny__train=80, pvt_v1_tiny__train=100)))
    out = tmp_path / "targets.json"
    assert targets.main(["--op", str(tmp_path / "none.json"), "--model", str(model), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "none.json: missing" in text and "0 of 9 met, 1 missed, 8 not measured" in text
    written = json.loads(out.read_text())
    assert [x["verdict"] for x in written].count("MISSED") == 1 and written[-2]["value"] == pytest.approx(0.8)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit) as exit_info:
        targets.main(["--op", str(bad)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "bad.json is not a benchmark result" in err and len(err.splitlines()) == 1
