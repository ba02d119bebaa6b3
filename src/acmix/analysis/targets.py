"""The GPU speed targets (``docs/fast-paths.md``, "GPU targets") checked against the benchmarks' JSON.

Reads what ``benchmarks/op_bench.py`` and ``benchmarks/model_bench.py`` wrote
(by default the CUDA results of ``benchmarks/gpu_suite.sh``) and prints, for
every target, the measured ratio, the target, the ambition and whether they are
met, as a Markdown table; ``--json`` writes the same lines.  Nothing is
measured here: every figure is one of the two benchmarks', so a table in the
README can be this command's output.  The layer targets take the default
dispatch (``auto``) at the four stride-1 stage shapes; the model targets the
training and inference rows of each family against its reference (SAN: the
default dispatch against the same model forced to ``eager``, which is what
SAN-ACmix ran on before the Triton kernels).

Run ``python benchmarks/targets.py``; ``--help`` lists options.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LAYER", "MODELS", "Line", "check", "load", "main", "markdown"]


@dataclass(frozen=True)
class Goal:
    """A ratio's target and ambition; ``upper``: the ratio must stay at or below them (else at or above)."""

    what: str
    target: float
    ambition: float
    upper: bool


# op_bench impl field, goal (ratios to the faster 3x3 convolution of the same width, stride 1)
LAYER = (
    ("fwd_bwd_ratio", Goal("layer fwd+bwd / conv3x3", 2.0, 1.3, upper=True)),
    ("fwd_ratio", Goal("layer forward / conv3x3", 1.5, 1.0, upper=True)),
    ("mem_ratio", Goal("layer peak memory / conv3x3", 3.0, 2.0, upper=True)),
)
# (model, reference, mode, model_bench row field), goal: the model's value over the reference's
MODELS = (
    (("acmix_resnet50", "resnet50", "train", "img_s"), Goal("train img/s", 0.6, 0.8, upper=False)),
    (("acmix_resnet50", "resnet50", "infer", "img_s"), Goal("inference img/s", 0.5, 0.7, upper=False)),
    (("acmix_resnet50", "resnet50", "train", "peak_mem_mb"), Goal("peak training memory", 1.5, 1.2, upper=True)),
    (("acmix_swin_tiny", "swin_tiny_patch4_window7_224", "train", "img_s"),
     Goal("train img/s", 0.85, 0.95, upper=False)),
    (("acmix_pvt_tiny", "pvt_v1_tiny", "train", "img_s"), Goal("train img/s", 0.85, 0.95, upper=False)),
    (("acmix_san10", "acmix_san10@eager", "train", "img_s"), Goal("train img/s", 2.0, 4.0, upper=False)),
)


@dataclass(frozen=True)
class Line:
    """One checked ratio; ``value`` None where the benchmark's JSON lacks it."""

    goal: str
    case: str
    value: float | None
    target: float
    ambition: float
    upper: bool

    @property
    def verdict(self) -> str:
        value = self.value
        if value is None:
            return "not measured"

        def ok(bound: float) -> bool:
            return value <= bound if self.upper else value >= bound
        return "ambition met" if ok(self.ambition) else "met" if ok(self.target) else "MISSED"


def _line(goal: Goal, case: str, value: float | None) -> Line:
    return Line(goal.what, case, value, goal.target, goal.ambition, goal.upper)


def _layer_lines(op: dict[str, Any] | None, impl: str) -> list[Line]:
    rows = [] if op is None else [r for r in op["results"] if r["stride"] == 1]
    if not rows:
        return [_line(goal, "stride-1 stage shapes", None) for _, goal in LAYER]
    lines = []
    for field, goal in LAYER:
        for r in rows:
            ran = f" (auto -> {r['auto_backend']})" if impl == "auto" and "auto_backend" in r else ""
            measured = r["impl"].get(impl)
            lines.append(_line(goal, f"C={r['channels']}, {r['size']}², batch {r['batch']}, {r['dtype']}{ran}",
                               None if measured is None else measured[field]))
    return lines


def _model_lines(model: dict[str, Any] | None) -> list[Line]:
    rows = {} if model is None else {(r["model"], r["mode"]): r for r in model["results"]}
    lines = []
    for (name, ref, mode, field), goal in MODELS:
        a, b = rows.get((name, mode)), rows.get((ref, mode))
        value = a[field] / b[field] if a is not None and b is not None else None
        lines.append(_line(goal, f"`{name}` / `{ref}` ({mode})", value))
    return lines


def load(path: Path) -> dict[str, Any] | None:
    """A benchmark's JSON, or None where the file does not exist; ``ValueError`` if it is not one."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise ValueError(f"{path} is not a benchmark result (no 'results' list)")
    return data


def check(op: dict[str, Any] | None, model: dict[str, Any] | None, impl: str = "auto") -> list[Line]:
    """Every target's line from the two benchmarks' results (None: its lines are "not measured")."""
    return _layer_lines(op, impl) + _model_lines(model)


def markdown(lines: list[Line]) -> str:
    out = ["| goal | case | measured | target | ambition | verdict |", "|---|---|---|---|---|---|"]
    for x in lines:
        sign = "≤" if x.upper else "≥"
        value = "" if x.value is None else f"{x.value:.2f}×"
        out.append(f"| {x.goal} | {x.case} | {value} | {sign} {x.target:g}× | {sign} {x.ambition:g}× | {x.verdict} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="targets", description=__doc__.splitlines()[0])
    results = Path("benchmarks/results")
    parser.add_argument("--op", type=Path, default=results / "op_bench_cuda.json", help="op_bench's JSON")
    parser.add_argument("--model", type=Path, default=results / "model_bench_cuda.json",
                        help="model_bench's JSON")
    parser.add_argument("--impl", default="auto", help="the op_bench implementation checked (default auto)")
    parser.add_argument("--json", type=Path, default=None, help="also write the lines here")
    args = parser.parse_args(argv)
    try:
        op, model = load(args.op), load(args.model)
    except (ValueError, json.JSONDecodeError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    lines = check(op, model, args.impl)
    for path, data in ((args.op, op), (args.model, model)):
        where = "missing" if data is None else data.get("gpu") or data.get("device") or f"torch {data.get('torch')}"
        print(f"{path}: {where}")
    print()
    print(markdown(lines))
    missed = sum(x.verdict == "MISSED" for x in lines)
    unmeasured = sum(x.value is None for x in lines)
    print(f"\n{len(lines) - missed - unmeasured} of {len(lines)} met, {missed} missed, {unmeasured} not measured")
    if args.json is not None:
        args.json.write_text(json.dumps([{**asdict(x), "verdict": x.verdict} for x in lines], indent=2))
        print(f"wrote {args.json}")
    return 0
