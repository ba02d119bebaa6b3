"""The probe's Python cases: the layer, the functional op, second derivatives and the models.

Each entry of :func:`cases` is ``(name, expect, call)``; ``call()`` builds and
runs what a user would write.  An ``"ok"`` call checks its own result (against
the float64 reference or the float32 layer) and raises :class:`Wrong` when
the result is wrong, which the probe counts as silent-wrong.  ``scripts/probe.py``
wraps these into its ``Case`` table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

Entry = tuple[str, str, Callable[[], Any]]

# defects left to the owners of ops/ and nn/ (counted, printed, and not failing the run)
KNOWN: dict[str, str] = {}


class Wrong(Exception):
    """A call's own check of its result failed: the input was accepted but the answer is wrong."""


def _expect(condition: object, problem: str) -> None:
    if not condition:
        raise Wrong(problem)

FAMILIES = ("acmix_resnet_tiny", "acmix_resnet26", "acmix_san10", "acmix_pvt_tiny", "acmix_swin_tiny")


def _layer(**kwargs: Any) -> torch.nn.Module:
    from acmix.nn import ACmix

    torch.manual_seed(0)
    args = {"kernel_att": 3, "heads": 2}
    args.update(kwargs)
    return ACmix(args.pop("in_channels", 8), args.pop("out_channels", 8), **args)


def _x(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(*(shape or (2, 8, 9, 7)), dtype=dtype)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    _expect(a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}")
    _expect(torch.isfinite(a).all(), "non-finite output")
    err = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    _expect(err <= tol * max(1.0, b.double().abs().max().item() if b.numel() else 1.0), f"max error {err:.3g}")


def _reference(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The same layer in float64 on the reference backend."""
    import copy

    ref = copy.deepcopy(m).double()
    ref.backend = "reference"
    return ref(x.double())


def _forward_matches(x: torch.Tensor, tol: float = 1e-5, **kwargs: Any) -> Callable[[], None]:
    def call() -> None:
        m = _layer(**kwargs)
        _close(m(x), _reference(m, x), tol)
    return call


def _bad_input(x: Any, **kwargs: Any) -> Callable[[], None]:
    return lambda: _layer(**kwargs)(x)


def _bad_layer(*args: Any, **kwargs: Any) -> Callable[[], None]:
    def call() -> None:
        from acmix.nn import ACmix

        ACmix(*args, **kwargs)
    return call


def _layer_cases() -> list[Entry]:
    x = _x()
    return [
        ("layer float64 input into float32 layer", "error", _bad_input(x.double())),
        ("layer float16 input into float32 layer", "error", _bad_input(x.half())),
        ("layer bfloat16 input into float32 layer", "error", _bad_input(x.bfloat16())),
        ("layer int input", "error", _bad_input(x.long())),
        ("layer bool input", "error", _bad_input(x > 0)),
        ("layer numpy input", "error", _bad_input(x.numpy())),
        ("layer list input", "error", _bad_input(x.tolist())),
        ("layer 3-d input", "error", _bad_input(x[0])),
        ("layer 5-d input", "error", _bad_input(x[None])),
        ("layer wrong channel count", "error", _bad_input(_x(2, 5, 9, 7))),
        ("layer meta input into cpu layer", "error", _bad_input(x.to("meta"))),
        ("layer empty batch", "ok", _forward_matches(_x(0, 8, 9, 7))),
        ("layer batch 1", "ok", _forward_matches(_x(1, 8, 9, 7))),
        ("layer batch 3", "ok", _forward_matches(_x(3, 8, 9, 7))),
        ("layer 1x1 input", "ok", _forward_matches(_x(2, 8, 1, 1))),
        ("layer 2x3 input, window 7", "ok", _forward_matches(_x(2, 8, 2, 3), kernel_att=7)),
        ("layer 1xN strip", "ok", _forward_matches(_x(2, 8, 1, 17))),
        ("layer stride 2 odd size", "ok", _forward_matches(_x(2, 8, 9, 7), stride=2)),
        ("layer stride 3", "ok", _forward_matches(_x(2, 8, 10, 11), stride=3)),
        ("layer stride larger than input", "ok", _forward_matches(_x(2, 8, 3, 3), stride=5)),
        ("layer dilation 2", "ok", _forward_matches(x, dilation=2)),
        ("layer dilation larger than input", "ok", _forward_matches(_x(1, 8, 4, 4), dilation=9)),
        ("layer in_channels 1", "ok", _forward_matches(_x(2, 1, 5, 5), in_channels=1)),
        ("layer in != out channels", "ok", _forward_matches(_x(2, 6, 5, 5), in_channels=6, out_channels=12, heads=3)),
        ("layer non-contiguous input", "ok", _forward_matches(_x(2, 8, 7, 9).transpose(2, 3))),
        ("layer channels_last input", "ok", _forward_matches(x.contiguous(memory_format=torch.channels_last))),
        ("layer expanded (stride-0) input", "ok", _forward_matches(_x(1, 8, 9, 7).expand(3, -1, -1, -1))),
        ("layer combination attention", "ok", _forward_matches(x, combination="attention")),
        ("layer combination conv", "ok", _forward_matches(x, combination="conv")),
        ("layer combination fixed", "ok", _forward_matches(x, combination="fixed", rates=(0.3, 2.0))),
        *[(f"layer shift {s}", "ok", _forward_matches(x, shift=s)) for s in ("tensor", "fixed", "learnable")],
        ("layer no position encoding", "ok", _forward_matches(x, position_encoding=False)),
        ("layer conv_bias", "ok", _forward_matches(x, conv_bias=True)),
        ("layer backend reference", "ok", _forward_matches(x, backend="reference")),
        ("layer backend eager", "ok", _forward_matches(x, backend="eager")),
        ("layer float64 module", "ok", lambda: _float64_module()),
        ("layer fp16 module on the CPU", "ok",
         lambda: _close(_layer().half()(x.half()), _reference(_layer(), x), 2e-2)),
        ("layer bf16 module on the CPU", "ok",
         lambda: _close(_layer().bfloat16()(x.bfloat16()), _reference(_layer(), x), 8e-2)),
        ("layer bf16 autocast on the CPU", "ok", _autocast),
        ("layer NaN in one pixel stays local (eager)", "ok", _nan_local),
        ("layer under inference_mode", "ok", _inference_mode),
        ("layer pickled and deep-copied", "ok", _pickled),
        ("layer torch.jit.trace", "ok", _traced),
        ("layer eval() equals train()", "ok", lambda: _close(_layer().eval()(x), _layer().train()(x), 0.0)),
        ("layer moved with .to(float64)", "ok", lambda: _float64_module(_layer().to(torch.float64))),
        ("layer inf input gives no silent finite", "ok", _inf_input),
        ("layer position_encoding='no'", "error", _bad_layer(8, 8, position_encoding="no")),
        ("layer position_encoding=1", "error", _bad_layer(8, 8, position_encoding=1)),
        ("layer conv_bias='yes'", "error", _bad_layer(8, 8, conv_bias="yes")),
        ("layer rates nan", "error", _bad_layer(8, 8, rates=(math.nan, 0.5))),
        ("layer rates inf", "error", _bad_layer(8, 8, rates=(0.5, math.inf))),
        ("layer rates one value", "error", _bad_layer(8, 8, rates=(0.5,))),
        ("layer rates string", "error", _bad_layer(8, 8, rates="ab")),
        ("layer rates tensor pair", "ok", lambda: _layer(rates=torch.tensor([0.2, 0.8]))(x)),
        ("layer numpy int channels", "ok", lambda: _layer(in_channels=np.int64(8), out_channels=np.int32(8))(x)),
        ("layer numpy int kernel_att", "ok", lambda: _layer(kernel_att=np.int64(3))(x)),
        ("layer float channels", "error", _bad_layer(8.0, 8)),
        ("layer in_channels 0", "error", _bad_layer(0, 8)),
        ("layer out_channels -4", "error", _bad_layer(8, -4)),
        ("layer heads 3 for 8 channels", "error", _bad_layer(8, 8, heads=3)),
        ("layer heads 0", "error", _bad_layer(8, 8, heads=0)),
        ("layer heads True", "error", _bad_layer(8, 8, heads=True)),
        ("layer kernel_att 4", "error", _bad_layer(8, 8, kernel_att=4)),
        ("layer kernel_att 0", "error", _bad_layer(8, 8, kernel_att=0)),
        ("layer kernel_att 3.0", "error", _bad_layer(8, 8, kernel_att=3.0)),
        ("layer kernel_conv 2", "error", _bad_layer(8, 8, kernel_conv=2)),
        ("layer stride 0", "error", _bad_layer(8, 8, stride=0)),
        ("layer stride -1", "error", _bad_layer(8, 8, stride=-1)),
        ("layer dilation 0", "error", _bad_layer(8, 8, dilation=0)),
        ("layer dilation 10**6 (bounded memory)", "ok", _huge_dilation),
        ("layer combination 'both'", "error", _bad_layer(8, 8, combination="both")),
        ("layer shift 'x'", "error", _bad_layer(8, 8, shift="x")),
        ("layer backend 'nope'", "error", lambda: _layer(backend="nope")(x)),
        ("layer backend triton on a CPU tensor", "error", lambda: _layer(backend="triton")(x)),
        ("layer device 'nonsense'", "error", _bad_layer(8, 8, device="nonsense")),
        ("layer dtype int64", "error", _bad_layer(8, 8, dtype=torch.int64)),
        ("functional op wrong weight shape", "error", _functional_bad_weights),
    ]


def _float64_module(m: torch.nn.Module | None = None) -> None:
    m = m if m is not None else _layer(dtype=torch.float64)
    _close(m(_x().double()), _reference(m, _x()), 1e-10)


def _huge_dilation() -> None:
    """Iterated reflection repeats every 2*(9-1)=16 rows and 2*(7-1)=12 columns of a 9x7 input, so
    dilation 10**6 (= 16 mod 48) must equal dilation 16 (and fit in memory)."""
    m = _layer(dilation=10**6)
    small = _layer(dilation=10**6 % 48)
    _close(m(_x()), _reference(small, _x()))


def _inference_mode() -> None:
    m, x = _layer(), _x()
    with torch.inference_mode():
        y = m(x)
    _close(y, _reference(m, x))


def _pickled() -> None:
    import copy
    import pickle

    m, x = _layer(), _x()
    for other in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        _close(other(x), m(x), 0.0)


def _traced() -> None:
    m, x = _layer(), _x()
    traced = torch.jit.trace(m, x, check_trace=False)
    _close(traced(_x(3, 8, 9, 7)), _reference(m, _x(3, 8, 9, 7)))


def _autocast() -> None:
    m, x = _layer(), _x()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    _close(y.float(), _reference(m, x), 8e-2)


def _nan_local() -> None:
    m, x = _layer(backend="eager"), _x(1, 8, 15, 15)
    x[0, :, 0, 0] = math.nan
    y = m(x)
    _expect(torch.isnan(y[0, :, 0, 0]).all(), "the NaN pixel's output is finite")
    _expect(torch.isfinite(y[0, :, 8:, 8:]).all(), "NaN spread beyond the window")


def _inf_input() -> None:
    x = _x()
    x[0, 0, 0, 0] = math.inf
    y = _layer()(x)
    _expect(not torch.isfinite(y[0]).all(), "inf input gave an all-finite output")
    _expect(torch.isfinite(y[1]).all(), "inf leaked into another sample")


def _functional_bad_weights() -> None:
    from acmix.ops import acmix

    m = _layer()
    w = m.weights()
    w = type(w)(**{**w.__dict__, "q_weight": torch.zeros(8, 5, 1, 1)}) if hasattr(w, "__dict__") else w._replace(
        q_weight=torch.zeros(8, 5, 1, 1))
    acmix(_x(), w, m.config)


# --------------------------------------------------------------------------- second derivatives
def _second_cases() -> list[Entry]:
    def grad_penalty() -> None:
        m, x = _layer(), _x().requires_grad_()
        g, = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
        g.square().sum().backward()
        ref = _layer(backend="reference").double()
        xr = _x().double().requires_grad_()
        gr, = torch.autograd.grad(ref(xr).square().sum(), xr, create_graph=True)
        gr.square().sum().backward()
        _close(m.conv1.weight.grad, ref.conv1.weight.grad, 1e-4)

    def gradgrad() -> None:
        m, x = _layer(dtype=torch.float64), _x(2, 8, 5, 4, dtype=torch.float64).requires_grad_()
        _expect(torch.autograd.gradgradcheck(m, (x,), eps=1e-6, atol=1e-5), "gradgradcheck failed")

    def gradcheck() -> None:
        m, x = _layer(dtype=torch.float64), _x(1, 8, 5, 4, dtype=torch.float64).requires_grad_()
        _expect(torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5), "gradcheck failed")

    def func(kind: str) -> Callable[[], None]:
        def call() -> None:
            from torch import func as F

            m, x = _layer(dtype=torch.float64), _x(1, 8, 4, 3, dtype=torch.float64)
            ref = _layer(dtype=torch.float64, backend="reference")

            def f(mod: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
                return lambda t: mod(t).square().sum()
            if kind == "jacrev":
                a, b = F.jacrev(m)(x), F.jacrev(ref)(x)
            elif kind == "hvp":
                v = torch.ones_like(x)
                a = F.jvp(F.grad(f(m)), (x,), (v,))[1]
                b = F.jvp(F.grad(f(ref)), (x,), (v,))[1]
            elif kind == "vmap":
                a, b = F.vmap(m)(x.expand(3, -1, -1, -1)[:, None])[:, 0], ref(x).expand(3, -1, -1, -1)
            elif kind == "jacfwd":
                a, b = F.jacfwd(m)(x), F.jacfwd(ref)(x)
            else:
                a, b = F.grad(f(m))(x), F.grad(f(ref))(x)
            _close(a, b, 1e-8)
        return call

    return [("create_graph gradient penalty (default path)", "ok", grad_penalty),
            ("gradcheck (default path)", "ok", gradcheck),
            ("gradgradcheck (default path)", "ok", gradgrad),
            *[(f"torch.func.{k} (default path)", "ok", func(k)) for k in ("grad", "jacrev", "hvp", "vmap", "jacfwd")]]


# --------------------------------------------------------------------------- models
def _model(name: str, **kwargs: Any) -> torch.nn.Module:
    import timm

    import acmix  # noqa: F401  (registers the models)

    torch.manual_seed(0)
    return timm.create_model(name, **kwargs).eval()


def _chans(m: torch.nn.Module) -> int:
    return next(c.in_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d))


def _run_model(name: str, size: tuple[int, ...], wrong_chans: bool = False, **kwargs: Any) -> Callable[[], None]:
    """A forward at ``size`` (its channel count: the model's own, or one more when ``wrong_chans``)."""
    def call() -> None:
        m = _model(name, **kwargs)
        size2 = (size[0], _chans(m) + wrong_chans, *size[2:])
        with torch.no_grad():
            y = m(torch.randn(*size2))
        _expect(torch.isfinite(y).all(), "non-finite output")
        _expect(y.shape[0] == size[0], f"batch {size[0]} gave output {tuple(y.shape)}")
    return call


def _features(name: str, out_indices: Any) -> Callable[[], None]:
    return lambda: _model(name, features_only=True, out_indices=out_indices)


def _num_classes_zero(name: str) -> Callable[[], None]:
    def call() -> None:
        m = _model(name, num_classes=0)
        with torch.no_grad():
            y = m(torch.randn(1, _chans(m), 64, 64))
        _expect(y.shape == (1, m.num_features), f"num_classes=0 gave {tuple(y.shape)}, not (1, {m.num_features})")
    return call


def _channels_last_model(name: str) -> Callable[[], None]:
    def call() -> None:
        m = _model(name)
        x = torch.randn(1, _chans(m), 64, 64)
        with torch.no_grad():
            a = m(x)
            b = m.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        _close(b, a, 1e-4)
    return call


def _model_dtype(name: str, dtype: torch.dtype, autocast: bool) -> Callable[[], None]:
    """A bf16/fp16 model (or autocast) against the float32 model, on the CPU."""
    def call() -> None:
        m = _model(name)
        x = torch.randn(2, _chans(m), 32, 32)
        with torch.no_grad():
            want = m(x)
            if autocast:
                with torch.autocast("cpu", dtype=dtype):
                    got = m(x)
            else:
                got = m.to(dtype)(x.to(dtype))
        _close(got.float(), want, 0.1)
    return call


def _model_pickled(name: str) -> Callable[[], None]:
    def call() -> None:
        import pickle

        m = _model(name)
        other = pickle.loads(pickle.dumps(m))
        x = torch.randn(1, _chans(m), 32, 32)
        with torch.no_grad():
            _close(other(x), m(x), 0.0)
        try:
            other(torch.randn(1, _chans(m) + 1, 32, 32))
        except ValueError:
            return
        raise Wrong("the unpickled model took an image with the wrong channel count")
    return call


def _model_cases() -> list[Entry]:
    out: list[Entry] = []
    for name in ("acmix_resnet_tiny", "acmix_san10"):  # the cheap ones
        out += [(f"{name} {dt} model on the CPU", "ok", _model_dtype(name, getattr(torch, dt), False))
                for dt in ("bfloat16", "float16")]
        out += [(f"{name} bf16 autocast", "ok", _model_dtype(name, torch.bfloat16, True)),
                (f"{name} pickled", "ok", _model_pickled(name)),
                (f"{name} float64 model", "ok", lambda name=name: _model_dtype(name, torch.float64, False)())]
    for name in FAMILIES:
        out += [
            (f"{name} features_only out_indices [7]", "error", _features(name, (7,))),
            (f"{name} features_only out_indices [-9]", "error", _features(name, (-9,))),
            (f"{name} features_only out_indices 'x'", "error", _features(name, "x")),
            (f"{name} odd input 37x45", "ok", _run_model(name, (1, 3, 37, 45))),
            # PVT refuses inputs whose stage-1 map (1/4) is smaller than its sr_ratio 8: 32x32 is its minimum
            (f"{name} tiny input 8x8", "error" if "pvt" in name else "ok", _run_model(name, (2, 3, 8, 8))),
            (f"{name} smallest input 32x32", "ok", _run_model(name, (1, 3, 32, 32))),
            (f"{name} wrong channel count", "error", _run_model(name, (1, 3, 32, 32), wrong_chans=True)),
            (f"{name} in_chans=2", "ok", _run_model(name, (1, 2, 32, 32), in_chans=2)),
            (f"{name} in_chans=0", "error", lambda name=name: _model(name, in_chans=0)),
            (f"{name} num_classes=2.5", "error", lambda name=name: _model(name, num_classes=2.5)),
            (f"{name} num_classes=0", "ok", _num_classes_zero(name)),
            (f"{name} num_classes=-1", "error", lambda name=name: _model(name, num_classes=-1)),
            (f"{name} combination='both'", "error", lambda name=name: _model(name, combination="both")),
            (f"{name} unknown kwarg", "error", lambda name=name: _model(name, bogus_option=1)),
            (f"{name} drop_path_rate=2", "error", lambda name=name: _model(name, drop_path_rate=2.0)),
            (f"{name} channels_last", "ok", _channels_last_model(name)),
        ]
    return out


def cases() -> list[Entry]:
    return _layer_cases() + _second_cases() + _model_cases()
