"""The probe script (``scripts/probe.py``): its table runs and counts no traceback, silent-wrong or rejection."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "probe.py"


def _probe() -> Any:
    spec = importlib.util.spec_from_file_location("acmix_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["acmix_probe"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_probe_counts_a_few_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _probe().main(["-k", "export ", "--json", str(tmp_path / "c.json")]) == 0  # not export-model / _program
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary == "8 cases: 1 ok, 7 clear error, 0 raw traceback, 0 silent-wrong, 0 valid rejected"


@pytest.mark.slow
def test_probe_whole_table(capsys: pytest.CaptureFixture[str]) -> None:
    probe = _probe()
    assert len(probe.CASES) >= 600
    assert probe.main([]) == 0  # 0 silent-wrong; tracebacks and rejections only those listed in KNOWN
    out = capsys.readouterr().out
    assert "0 silent-wrong" in out
    assert all(name in out for name in probe.probe_layer.KNOWN)  # a fixed one must leave KNOWN too
