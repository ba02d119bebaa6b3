"""Deployable artifacts with dynamic batch, height and width: ``torch.export`` programs and ONNX files.

Inside a traced graph the layers take their eager path in plain torch ops (never
the C++ kernel), and at symbolic sizes the window attention takes its tiled
form, exact at every size, so the graph carries no guard on H and W
(``docs/fast-paths.md``).  :func:`export_onnx` uses the dynamo exporter by
default; the legacy (TorchScript) exporter records Python size arithmetic as
constants, so its files run at the exported size only and it is offered for
that use.  :func:`check_onnx` runs a file in onnxruntime at several sizes
against the PyTorch model and checks that the file's input really has symbolic
batch, height and width (an exporter that fixes them does so silently).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["Parity", "check_onnx", "check_program", "dynamic_input_dims", "export_onnx", "export_program"]

INPUT, OUTPUT = "input", "output"


@contextlib.contextmanager
def _tracing() -> Iterator[None]:
    """The eager backend, and sizes traced as >= 2 rather than guarded at each 0/1 test: without that, a map
    that is one window tile at the example size pins the graph to that size (a guard such as ``H <= 28``)."""
    from torch.fx.experimental import _config

    from .ops import use_backend

    # the eager path in plain torch ops: the C++ kernel's custom op would tie the artifact to this build
    # torch's config modules gain patch() at runtime (install_config_module); its stubs do not show it
    with _config.patch(backed_size_oblivious=True), use_backend("eager"):  # type: ignore[attr-defined]
        yield


def _dims(batch: bool) -> dict[int, Any]:
    d = torch.export.Dim.DYNAMIC
    return {**({0: d} if batch else {}), 2: d, 3: d}


def _check_args(model: object, example: object) -> None:
    """One line for a model or example of another type (else an AttributeError or a torch.export UserError)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example, Tensor) or example.dim() != 4:
        what = f"shape {tuple(example.shape)}" if isinstance(example, Tensor) else type(example).__name__
        raise TypeError(f"example must be a 4-D (B, C, H, W) tensor, got {what}")


def export_program(model: nn.Module, example: Tensor, *, dynamic_batch: bool = True) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` (put in eval mode) with dynamic H, W (and batch).

    The program runs at any size at which every feature map with an ACmix layer
    is at least 2 x 2 (1-pixel maps are specialised away while tracing).
    """
    _check_args(model, example)
    model.eval()
    with _tracing():
        return torch.export.export(model, (example,), dynamic_shapes=({**_dims(dynamic_batch)},))


def export_onnx(model: nn.Module, example: Tensor, path: str | os.PathLike, *, dynamo: bool = True,
                dynamic_batch: bool = True, opset: int = 18) -> str:
    """Write ``model`` (eval mode) to the ONNX file ``path``; input ``"input"``, first output ``"output"``.

    ``dynamo=True``: batch (if ``dynamic_batch``), H and W symbolic.  ``dynamo=False``:
    the legacy exporter, whose graph holds the example's H and W as constants.
    """
    path = os.fspath(path)
    _check_args(model, example)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # before the export, not after it
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    model.eval()
    with warnings.catch_warnings(), _tracing():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer chatter
        if dynamo:
            prog = torch.onnx.export(model, (example,), input_names=[INPUT], output_names=[OUTPUT],
                                     dynamic_shapes=({**_dims(dynamic_batch)},), opset_version=opset,
                                     dynamo=True, external_data=False, verbose=False)
            assert prog is not None  # dynamo=True returns the program
            prog.save(path)
        else:
            axes = {0: "batch"} if dynamic_batch else {}
            torch.onnx.export(model, (example,), path, input_names=[INPUT], output_names=[OUTPUT],
                              dynamic_axes={INPUT: axes, OUTPUT: dict(axes)} if axes else None,
                              opset_version=opset, dynamo=False)
    return path


def dynamic_input_dims(path: str | os.PathLike) -> list[bool]:
    """For each dimension of the file's first input: whether it is symbolic (not a fixed size)."""
    import onnx

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except OSError:
        raise
    except Exception as e:  # protobuf's DecodeError and kin: a file that is not ONNX
        raise ValueError(f"{os.fspath(path)}: not an ONNX model ({type(e).__name__})") from None
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [not d.HasField("dim_value") for d in dims]


class Parity(NamedTuple):
    """One size checked: the input shape, the largest absolute difference, the reference's largest magnitude."""

    shape: tuple[int, ...]
    max_abs_diff: float
    ref_max_abs: float

    def ok(self, rtol: float) -> bool:
        return self.max_abs_diff <= rtol * max(self.ref_max_abs, 1.0)

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape))
        return f"{shape}: max |diff| {self.max_abs_diff:.2e} (output max {self.ref_max_abs:.2e})"


def _first(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0]


def _inputs(shapes: Sequence[Sequence[int]], seed: int) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(tuple(s), generator=g) for s in shapes]


def check_onnx(model: nn.Module, path: str | os.PathLike, shapes: Sequence[Sequence[int]], *,
               rtol: float = 1e-4, seed: int = 0) -> list[Parity]:
    """Run the ONNX file in onnxruntime (CPU) at each input shape against ``model`` in float32.

    ``ValueError`` if a shape differs from the first and the file's input is
    fixed there, or if the largest difference exceeds ``rtol`` times the
    output's largest magnitude (at least 1).
    """
    import onnxruntime as ort

    dyn = dynamic_input_dims(path)
    for s in shapes[1:]:
        fixed = [i for i, (a, b) in enumerate(zip(s, shapes[0])) if a != b and not dyn[i]]
        if fixed:
            raise ValueError(f"{os.fspath(path)}: input dims {fixed} are fixed in the file, shape {tuple(s)} "
                             f"cannot run (dynamic dims: {dyn})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    model.eval()
    out = []
    for x in _inputs(shapes, seed):
        with torch.no_grad():
            ref = _first(model(x)).float()
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
        if got.shape != ref.shape:
            raise ValueError(f"onnxruntime output {tuple(got.shape)} != PyTorch {tuple(ref.shape)} at {tuple(x.shape)}")
        out.append(Parity(tuple(x.shape), (got - ref).abs().max().item(), ref.abs().max().item()))
    _raise_if_off(out, rtol, "onnxruntime")
    return out


def check_program(model: nn.Module, program: torch.export.ExportedProgram, shapes: Sequence[Sequence[int]], *,
                  rtol: float = 1e-5, seed: int = 0) -> list[Parity]:
    """Run an exported program at each shape against ``model``; ``ValueError`` past ``rtol`` as :func:`check_onnx`."""
    model.eval()
    run = program.module()
    out = []
    for x in _inputs(shapes, seed):
        with torch.no_grad():
            ref, got = _first(model(x)), _first(run(x))
        out.append(Parity(tuple(x.shape), (got - ref).abs().max().item(), ref.abs().max().item()))
    _raise_if_off(out, rtol, "exported program")
    return out


def _raise_if_off(results: list[Parity], rtol: float, what: str) -> None:
    bad = [r for r in results if not r.ok(rtol)]
    if bad:
        raise ValueError(f"{what} differs from PyTorch beyond rtol={rtol}: " + "; ".join(map(str, bad)))
