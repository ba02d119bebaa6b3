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
    return (_layer_cases() + _second_cases() + _model_cases() + _probe2_layer_cases() + _probe2_model_cases()
            + _probe2_api_cases())


# --------------------------------------------------------------------------- second probe: the layer and the op
def _same_as_reference(m: torch.nn.Module, x: torch.Tensor, tol: float = 1e-5) -> None:
    _close(m(x), _reference(m, x), tol)


def _grads_match(backend: str | None = None, train: tuple[str, ...] | None = None, x_grad: bool = True,
                 dtype: torch.dtype = torch.float64) -> Callable[[], None]:
    """Gradients of the parameters named in ``train`` (all when None) and of x, against the float64 reference."""
    def call() -> None:
        import copy

        m = _layer(backend=backend, dtype=dtype)
        for name, p in m.named_parameters():
            p.requires_grad_(train is None or name in train)
        ref = copy.deepcopy(m).double()
        ref.backend = "reference"
        x, xr = _x().to(dtype).requires_grad_(x_grad), _x().double().requires_grad_(x_grad)
        m(x).square().sum().backward()
        ref(xr).square().sum().backward()
        pairs = [(a.grad, b.grad) for a, b in zip(m.parameters(), ref.parameters()) if a.requires_grad]
        pairs += [(x.grad, xr.grad)] if x_grad else []
        _expect(pairs and all(a is not None for a, _ in pairs), "a gradient is missing")
        for a, b in pairs:
            _close(a, b, 1e-9 if dtype == torch.float64 else 1e-4)
        _expect(all(p.grad is None for p in m.parameters() if not p.requires_grad), "a frozen weight got a gradient")
    return call


def _meta_shapes() -> None:
    m = _layer(stride=2, device="meta")
    y = m(_x().to("meta"))
    _expect(y.shape == (2, 8, 5, 4) and y.device.type == "meta", f"meta output {tuple(y.shape)} on {y.device}")


def _to_empty() -> None:
    m = _layer(device="meta").to_empty(device="cpu")
    m.reset_parameters()
    _same_as_reference(m, _x())


def _state_dict_round_trip() -> None:
    a, b = _layer(), _layer(rates=(0.1, 0.9))
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1.0)
    b.load_state_dict(a.state_dict())
    _close(b(_x()), a(_x()), 0.0)


def _saved_whole() -> None:
    import io

    buffer = io.BytesIO()
    m = _layer()
    torch.save(m, buffer)
    buffer.seek(0)
    _close(torch.load(buffer, weights_only=False)(_x()), m(_x()), 0.0)


def _under_backend(backend: str, dtype: torch.dtype) -> Callable[[], None]:
    def call() -> None:
        from acmix import use_backend

        m = _layer(dtype=dtype)
        with use_backend(backend):
            y = m(_x().to(dtype))
        _close(y, _reference(m, _x()), 1e-10 if dtype == torch.float64 else 8e-2)
    return call


def _autocast_backend(backend: str) -> Callable[[], None]:
    def call() -> None:
        m = _layer(backend=backend)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            m(_x())
    return call


def _batch0_backward() -> None:
    x = _x(0, 8, 5, 5).requires_grad_()
    _layer()(x).sum().backward()
    _expect(x.grad is not None and x.grad.shape == x.shape, "no gradient of the empty batch")


def _func_params(kind: str) -> Callable[[], None]:
    """``torch.func`` over the parameters (model ensembling, per-weight Jacobians) against the reference."""
    def call() -> None:
        from torch import func as F

        m, x = _layer(dtype=torch.float64), _x(2, 8, 5, 4, dtype=torch.float64)
        params = {k: v.detach() for k, v in m.named_parameters()}
        ref = _layer(dtype=torch.float64, backend="reference")
        if kind == "vmap":
            stacked = {k: torch.stack([v, v + 0.01]) for k, v in params.items()}
            got = F.vmap(lambda p, t: F.functional_call(m, p, (t,)))(stacked, x[:, None])
            want = torch.stack([F.functional_call(ref, {k: v[i] for k, v in stacked.items()}, (x[i:i + 1],))
                                for i in range(2)])
            _close(got, want, 1e-10)
            return
        if kind == "jacrev":
            def f(mod: torch.nn.Module) -> Callable[[dict], torch.Tensor]:
                return lambda p: F.functional_call(mod, p, (x[:1, :, :3, :3],))
        else:
            def f(mod: torch.nn.Module) -> Callable[[dict], torch.Tensor]:
                return lambda p: F.functional_call(mod, p, (x,)).square().sum()
        transform = F.jacrev if kind == "jacrev" else F.grad
        got, want = transform(f(m))(params), transform(f(ref))(params)
        for k in got:
            _close(got[k], want[k], 1e-9)
    return call


def _compiled() -> None:
    m = _layer()
    _close(torch.compile(m, backend="eager")(_x()), _reference(m, _x()))


def _checkpointed_auto() -> None:
    """The first AUTO call measures inside the checkpointed forward; the recomputation must save as much."""
    import os
    import tempfile

    from torch.utils.checkpoint import checkpoint

    from acmix.ops import autotune

    old = {k: os.environ.get(k) for k in ("ACMIX_AUTOTUNE", "ACMIX_CACHE_DIR")}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(ACMIX_AUTOTUNE="1", ACMIX_CACHE_DIR=tmp)
        autotune.clear()
        try:
            _grads_through(lambda m, x: checkpoint(m, x, use_reentrant=False))
        finally:
            autotune.clear()
            for k, v in old.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _grads_through(run: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> None:
    m = _layer(dtype=torch.float64, heads=4, kernel_att=5)
    x = _x(2, 8, 11, 10, dtype=torch.float64).requires_grad_()
    got = torch.autograd.grad(run(m, x).square().sum(), [x, *m.parameters()])
    from acmix.ops import acmix_reference

    ref = acmix_reference(x, m.weights(), m.config)
    want = torch.autograd.grad(ref.square().sum(), [x, *m.parameters()])
    for a, b in zip(got, want):
        _close(a, b, 1e-9)


def _op(change: Callable[[Any], Any] | None = None, config: Any = None, backend: str | None = None,
        weights: Any = None) -> Callable[[], None]:
    """The functional op on the layer's weights (``change``d), or on ``weights``/``config`` as given."""
    def call() -> None:
        from acmix.ops import acmix

        m = _layer()
        w = m.weights()
        w = weights(w) if weights else (change(w) if change else w)
        out = acmix(_x(), w, m.config if config is None else config, backend=backend)
        if change is not None and weights is None:  # an accepted change must give the changed layer's result
            from acmix.ops import acmix_reference

            want = acmix_reference(_x().double(), type(w)(*(t.detach().double() if isinstance(t, torch.Tensor)
                                                             else t for t in w)), m.config)
            _close(out, want, 1e-5)
    return call


def _native() -> bool:
    from acmix.ops import native

    return native.available()


def _detached(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def _probe2_layer_cases() -> list[Entry]:
    x = _x()
    cuda = torch.cuda.is_available()
    return [
        *[(f"layer {name}", "ok", _forward_matches(shape, **kw)) for name, shape, kw in (
            ("kernel_att 1", x, {"kernel_att": 1}), ("kernel_conv 1", x, {"kernel_conv": 1}),
            ("kernel_conv 5 stride 2", x, {"kernel_conv": 5, "stride": 2}),
            ("kernel_att 5 dilation 3 stride 2", x, {"kernel_att": 5, "dilation": 3, "stride": 2}),
            ("head dim 1 (8 heads of 8)", x, {"heads": 8}), ("one head", x, {"heads": 1}),
            ("1x1 input stride 2", _x(1, 8, 1, 1), {"stride": 2}),
            ("2x2 input window 7 dilation 2", _x(1, 8, 2, 2), {"kernel_att": 7, "dilation": 2}),
            ("kernel_conv 11 on a 3x3 map", _x(1, 8, 3, 3), {"kernel_conv": 11}),
            ("channel-sliced view input", _x(2, 16, 9, 7)[:, ::2], {}),
            ("flipped (negative-step copy) input", _x().flip(-1), {}),
            ("storage-offset input", _x(3, 8, 9, 7)[1:], {}),
            ("channel-expanded (stride-0) input", _x(2, 1, 9, 7).expand(2, 8, 9, 7), {}),
            ("spatially expanded (stride-0) input", _x(2, 8, 1, 1).expand(2, 8, 9, 7), {}),
            ("channels_last stride 2, eager", x.contiguous(memory_format=torch.channels_last),
             {"stride": 2, "backend": "eager"}),
            ("1xN strip kernel_conv 5 stride 3", _x(3, 8, 1, 11), {"kernel_conv": 5, "stride": 3}),
            ("1x1 input, conv only", _x(1, 8, 1, 1), {"combination": "conv"}))],
        ("layer float64 under use_backend('eager')", "ok", _under_backend("eager", torch.float64)),
        ("layer float64 under use_backend('reference')", "ok", _under_backend("reference", torch.float64)),
        ("layer bf16 module under use_backend('reference')", "ok", _under_backend("reference", torch.bfloat16)),
        ("layer bf16 module under use_backend('eager')", "ok", _under_backend("eager", torch.bfloat16)),
        ("layer bf16 module under use_backend('cpu_kernel')", "error", _under_backend("cpu_kernel", torch.bfloat16)),
        ("layer backend cpu_kernel under autocast", "error", _autocast_backend("cpu_kernel")),
        ("layer backend triton under autocast on the CPU", "error", _autocast_backend("triton")),
        ("layer backend=3", "error", lambda: _layer(backend=3)(x)),
        ("layer backend='EAGER'", "error", lambda: _layer(backend="EAGER")(x)),
        ("layer backend Backend.COMPILED alias", "ok" if _native() else "error", lambda: _float64_module(_layer(
            dtype=torch.float64, backend=__import__("acmix").Backend.COMPILED))),
        ("use_backend('nope')", "error", lambda: __import__("acmix").use_backend("nope").__enter__()),
        ("layer meta layer, meta input (shapes)", "ok", _meta_shapes),
        ("layer meta layer, cpu input", "error", lambda: _layer(device="meta")(x)),
        ("layer to_empty from meta, then forward", "ok", _to_empty),
        ("layer grad of conv2.weight only", "ok", _grads_match(train=("conv2.weight",), x_grad=False)),
        ("layer grad of rate1 only", "ok", _grads_match(train=("rate1",), x_grad=False)),
        ("layer grad of x only (frozen layer)", "ok", _grads_match(train=())),
        ("layer float64 grads, eager", "ok", _grads_match("eager")),
        ("layer float64 grads, reference", "ok", _grads_match("reference")),
        ("layer float32 grads, default path", "ok", _grads_match(dtype=torch.float32)),
        ("layer state_dict round trip", "ok", _state_dict_round_trip),
        ("layer torch.save of the whole module", "ok", _saved_whole),
        ("layer rates as a list", "ok", lambda: _forward_matches(x, rates=[0.1, 0.2])()),
        ("layer rates as a numpy array", "ok", lambda: _forward_matches(x, rates=np.array([0.1, 0.2]))()),
        ("layer rates tensor requiring grad", "ok",
         lambda: _forward_matches(x, rates=torch.ones(2, requires_grad=True))()),
        ("layer kernel_att True", "error", _bad_layer(8, 8, kernel_att=True)),
        ("layer stride 2.0", "error", _bad_layer(8, 8, stride=2.0)),
        ("layer dilation None", "error", _bad_layer(8, 8, dilation=None)),
        ("layer combination 'CONV'", "error", _bad_layer(8, 8, combination="CONV")),
        ("layer shift None", "error", _bad_layer(8, 8, shift=None)),
        ("layer dtype float16 argument", "ok",
         lambda: _close(_layer(dtype=torch.float16)(x.half()), _reference(_layer(), x), 2e-2)),
        ("layer dtype 'float32' (a string)", "error", _bad_layer(8, 8, dtype="float32")),
        ("layer device 'cuda'", "ok" if cuda else "error", _bad_layer(8, 8, device="cuda")),
        ("layer device 0", "ok" if cuda else "error", _bad_layer(8, 8, device=0)),
        ("layer complex input", "error", _bad_input(_x().to(torch.complex64))),
        ("layer zero-height input", "error", _bad_input(_x(2, 8, 0, 3))),
        ("layer empty batch backward", "ok", _batch0_backward),
        ("layer empty batch, reference", "ok", _forward_matches(_x(0, 8, 5, 5), backend="reference")),
        ("torch.func.vmap over stacked parameters", "ok", _func_params("vmap")),
        ("torch.func.jacrev over the parameters", "ok", _func_params("jacrev")),
        ("torch.func.grad over the parameters", "ok", _func_params("grad")),
        ("layer torch.compile(backend='eager')", "ok", _compiled),
        ("layer activation checkpointing while AUTO measures", "ok", _checkpointed_auto),
        ("op weights as a plain tuple", "error", _op(weights=tuple)),
        ("op weights as a dict", "error", _op(weights=lambda w: w._asdict())),
        ("op config as a dict", "error", _op(config={"in_channels": 8})),
        ("op config None", "error", lambda: __import__("acmix").acmix(x, _layer().weights(), None)),
        ("op k_weight float64 in a float32 layer", "error", _op(lambda w: w._replace(k_weight=w.k_weight.double()))),
        ("op v_bias float64 in a float32 layer", "error", _op(lambda w: w._replace(v_bias=w.v_bias.double()))),
        ("op fc_weight float64 in a float32 layer", "error",
         _op(lambda w: w._replace(fc_weight=w.fc_weight.double()))),
        ("op rate_att float64 in a float32 layer", "error", _op(lambda w: w._replace(rate_att=w.rate_att.double()))),
        ("op conv_weight on meta, rest on cpu", "error",
         _op(lambda w: w._replace(conv_weight=w.conv_weight.to("meta")))),
        ("op pe_bias of the wrong shape", "error", _op(lambda w: w._replace(pe_bias=torch.zeros(7)))),
        ("op pe_bias None", "ok", _op(lambda w: w._replace(pe_bias=None))),
        ("op q_bias a numpy array", "error", _op(lambda w: w._replace(q_bias=w.q_bias.detach().numpy()))),
        ("op k_weight a numpy array", "error", _op(lambda w: w._replace(k_weight=w.k_weight.detach().numpy()))),
        ("op q_weight int64", "error", _op(lambda w: w._replace(q_weight=w.q_weight.long()))),
        ("op rate_att a python float", "error", _op(lambda w: w._replace(rate_att=0.5))),
        ("op rate_att a 0-d tensor", "error", _op(lambda w: w._replace(rate_att=torch.tensor(0.5)))),
        ("op missing fc_weight", "error", _op(lambda w: w._replace(fc_weight=None))),
        ("op missing rate_att", "error", _op(lambda w: w._replace(rate_att=None))),
        ("op backend given positionally", "error", lambda: __import__("acmix").acmix(
            x, _layer().weights(), _layer().config, "eager")),
        *[(f"op non-contiguous q_weight, {b}", "ok", _op(
            lambda w: w._replace(q_weight=_detached(w.q_weight).transpose(0, 1).contiguous().transpose(0, 1)),
            backend=b)) for b in ("reference", "eager")],
        *[(f"op stride-0 (expanded) k_weight, {b}", "ok", _op(
            lambda w: w._replace(k_weight=_detached(w.k_weight)[:1].expand(8, 8, 1, 1)), backend=b))
          for b in ("reference", "eager")],
        ("op channels_last conv_weight, eager", "ok", _op(
            lambda w: w._replace(conv_weight=_detached(w.conv_weight).contiguous(memory_format=torch.channels_last)),
            backend="eager")),
        ("layer NaN in one pixel stays local (reference)", "ok", _nan_local_on("reference")),
    ]


def _nan_local_on(backend: str) -> Callable[[], None]:
    def call() -> None:
        m, x = _layer(backend=backend), _x(1, 8, 15, 15)
        x[0, :, 0, 0] = math.nan
        y = m(x)
        _expect(torch.isnan(y[0, :, 0, 0]).all() and torch.isfinite(y[0, :, 8:, 8:]).all(), "NaN not local")
    return call


# --------------------------------------------------------------------------- second probe: models
def _in_chans(name: str) -> int:
    return 1 if name == "acmix_resnet_tiny" else 3


def _image(name: str, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(shape[0], _in_chans(name), *shape[1:]).to(dtype)


def _reset_then_run(name: str, *args: Any) -> Callable[[], None]:
    def call() -> None:
        m = _model(name)
        m.reset_classifier(*args)
        with torch.no_grad():
            y = m(_image(name, 1, 32, 32))
        want = args[0] if args[0] else m.num_features
        _expect(y.shape == (1, want), f"reset_classifier{args} gave output {tuple(y.shape)}, not (1, {want})")
    return call


def _head_split(name: str) -> Callable[[], None]:
    def call() -> None:
        m, x = _model(name), _image(name, 2, 32, 32)
        with torch.no_grad():
            f = m.forward_features(x)
            pre, y = m.forward_head(f, pre_logits=True), m.forward_head(f)
            _close(y, m(x), 0.0)
        _expect(pre.shape == (2, m.num_features), f"pre_logits {tuple(pre.shape)}, num_features {m.num_features}")
    return call


def _grad_checkpointing(name: str) -> Callable[[], None]:
    """Same loss and gradients with and without ``set_grad_checkpointing`` (first AUTO call included)."""
    def call() -> None:
        m, x = _model(name).train(), _image(name, 2, 32, 32)
        results = []
        for enable in (True, False):
            m.set_grad_checkpointing(enable)
            m.zero_grad()
            torch.manual_seed(3)
            loss = m(x).square().mean()
            loss.backward()
            results.append([loss.detach(), *(p.grad.clone() for p in m.parameters() if p.grad is not None)])
        _expect(len(results[0]) == len(results[1]), "another set of parameters got gradients")
        for a, b in zip(*results):
            _close(a, b, 1e-4)
    return call


def _features_run(name: str, out_indices: Any, size: tuple[int, int] = (32, 32)) -> Callable[[], None]:
    def call() -> None:
        kwargs = {} if out_indices is None else {"out_indices": out_indices}
        m = _model(name, features_only=True, **kwargs)
        with torch.no_grad():
            feats = m(_image(name, 1, *size))
        channels = m.feature_info.channels()
        _expect(feats and [f.shape[1] for f in feats] == channels, f"features {[tuple(f.shape) for f in feats]} "
                                                                   f"for channels {channels}")
    return call


def _intermediates(name: str) -> Callable[[], None]:
    def call() -> None:
        m, x = _model(name), _image(name, 1, 32, 32)
        with torch.no_grad():
            final, maps = m.forward_intermediates(x)
            _close(final, m.forward_features(x), 0.0)
        _expect(len(maps) == len(m.feature_info), f"{len(maps)} intermediates for {len(m.feature_info)} levels")
    return call


def _model_input(name: str, x: torch.Tensor, classes: int = 0) -> Callable[[], None]:
    def call() -> None:
        m = _model(name)
        with torch.no_grad():
            y = m(x)
        _expect(y.shape == (x.shape[0], classes or m.num_classes), f"output {tuple(y.shape)}")
        _expect(torch.isfinite(y).all(), "non-finite output")
    return call


def _meta_model(name: str) -> Callable[[], None]:
    def call() -> None:
        y = _model(name).to("meta")(_image(name, 2, 32, 32).to("meta"))
        _expect(y.shape[0] == 2 and y.device.type == "meta", f"meta output {tuple(y.shape)} on {y.device}")
    return call


def _state_dict_copy(name: str) -> Callable[[], None]:
    def call() -> None:
        import copy

        m = _model(name)
        other = copy.deepcopy(m)
        other.load_state_dict(m.state_dict())
        with torch.no_grad():
            _close(other(_image(name, 1, 32, 32)), m(_image(name, 1, 32, 32)), 0.0)
    return call


def _cfg_names(name: str) -> Callable[[], None]:
    def call() -> None:
        m = _model(name)
        for key in ("first_conv", "classifier"):
            m.get_submodule(m.pretrained_cfg[key])  # AttributeError if the name is stale
    return call


def _probe2_model_cases() -> list[Entry]:
    out: list[Entry] = []
    for name in FAMILIES:
        out += [
            (f"{name} reset_classifier(5)", "ok", _reset_then_run(name, 5)),
            (f"{name} reset_classifier(0)", "ok", _reset_then_run(name, 0)),
            (f"{name} reset_classifier(5, 'avg')", "ok", _reset_then_run(name, 5, "avg")),
            (f"{name} reset_classifier(-1)", "error", lambda name=name: _model(name).reset_classifier(-1)),
            (f"{name} reset_classifier(2.5)", "error", lambda name=name: _model(name).reset_classifier(2.5)),
            (f"{name} reset_classifier(5, 'nope')", "error",
             lambda name=name: _model(name).reset_classifier(5, "nope")),
            (f"{name} global_pool='nope'", "error", lambda name=name: _model(name, global_pool="nope")),
            (f"{name} forward_features + forward_head(pre_logits=True)", "ok", _head_split(name)),
            (f"{name} set_grad_checkpointing", "ok", _grad_checkpointing(name)),
            (f"{name} features_only default levels", "ok", _features_run(name, None)),
            (f"{name} features_only out_indices (-1,) at 45x37", "ok", _features_run(name, (-1,), (45, 37))),
            (f"{name} features_only out_indices=1 (last level)", "ok", _features_run(name, 1)),
            (f"{name} features_only out_indices=2 (last two)", "ok", _features_run(name, 2)),
            (f"{name} features_only out_indices=0", "error", _features(name, 0)),
            (f"{name} features_only out_indices (1, 1)", "error", _features(name, (1, 1))),
            (f"{name} features_only out_indices (0, -1)", "ok", _features_run(name, (0, -1))),
            (f"{name} features_only out_indices (True,)", "error", _features(name, (True,))),
            (f"{name} features_only out_indices (1.0,)", "error", _features(name, (1.0,))),
            (f"{name} forward_intermediates", "ok", _intermediates(name)),
            (f"{name} empty batch", "ok", _model_input(name, _image(name, 0, 32, 32))),
            (f"{name} 3-d input", "error", _model_input(name, _image(name, 1, 32, 32)[0])),
            (f"{name} float64 images into a float32 model", "error",
             _model_input(name, _image(name, 1, 32, 32, dtype=torch.float64))),
            (f"{name} uint8 images", "error", _model_input(name, _image(name, 1, 32, 32, dtype=torch.uint8))),
            (f"{name} non-square 32x96", "ok", _model_input(name, _image(name, 1, 32, 96))),
            (f"{name} drop_path_rate=nan", "error", lambda name=name: _model(name, drop_path_rate=math.nan)),
            (f"{name} drop_rate=True", "error", lambda name=name: _model(name, drop_rate=True)),
            (f"{name} num_classes=True", "error", lambda name=name: _model(name, num_classes=True)),
            (f"{name} num_classes='10'", "error", lambda name=name: _model(name, num_classes="10")),
            (f"{name} in_chans=2.0", "error", lambda name=name: _model(name, in_chans=2.0)),
            (f"{name} meta device forward (shapes)", "ok", _meta_model(name)),
            (f"{name} deepcopy + strict state_dict load", "ok", _state_dict_copy(name)),
            (f"{name} pretrained_cfg first_conv / classifier exist", "ok", _cfg_names(name)),
        ]
    return out


# --------------------------------------------------------------------------- second probe: replace, export, dense
def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 8, 3, padding=1, stride=2), torch.nn.Conv2d(8, 8, 1))


def _replace(*args: Any, net: Callable[[], torch.nn.Module] = _net, **kwargs: Any) -> Callable[[], None]:
    def call() -> None:
        from acmix.nn import replace_convs

        replace_convs(*(args or (net(),)), **kwargs)
    return call


def _replace_runs(dtype: torch.dtype, expect: list[str], **kwargs: Any) -> Callable[[], None]:
    def call() -> None:
        from acmix.nn import replace_convs

        model = _net().to(dtype)
        done = [r.name for r in replace_convs(model, **kwargs)]
        _expect(done == expect, f"replaced {done}, expected {expect}")
        y = model(torch.randn(1, 3, 9, 9, dtype=dtype))
        _expect(y.dtype == dtype and torch.isfinite(y).all(), f"output {y.dtype}, finite {torch.isfinite(y).all()}")
    return call


def _conv(**kwargs: Any) -> Callable[[], torch.nn.Module]:
    return lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, **{"padding": 1, **kwargs}))


def _export(what: str) -> Callable[[], None]:
    def call() -> None:
        import os
        import tempfile

        from acmix import export as E

        m = _layer().eval()
        if what == "not a module":
            E.export_program(lambda t: t, _x())
        elif what == "numpy example":
            E.export_program(m, _x().numpy())
        elif what == "3-d example":
            E.export_program(m, _x()[0])
        elif what == "missing folder":
            E.export_onnx(m, _x(), "/nonexistent/acmix-probe/m.onnx")
        elif what == "garbage onnx":
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "g.onnx")
                with open(path, "wb") as f:
                    f.write(b"not a protobuf")
                E.dynamic_input_dims(path)
        else:  # the exported program at other sizes
            program = E.export_program(m, _x())
            results = E.check_program(m, program, [(3, 8, 11, 5), (1, 8, 4, 9)])
            _expect(len(results) == 2 and all(r.max_abs_diff <= 1e-4 * max(1.0, r.ref_max_abs) for r in results),
                    f"{results}")
    return call


def _dense(what: str) -> Callable[[], None]:
    def call() -> None:
        from acmix import dense as D

        small = {"depths": (1, 1, 1, 1), "embed_dims": (16, 32, 40, 64), "num_heads": (1, 2, 5, 8)}
        if what == "bad name":
            D.fpn_backbone("nope")
        elif what == "no reductions":
            D.fpn_backbone("acmix_pvt_tiny", reductions=(), **small)
        elif what == "out_channels 0":
            D.fpn_backbone("acmix_pvt_tiny", out_channels=0, **small)
        elif what == "extra_blocks":
            D.fpn_backbone("acmix_pvt_tiny", extra_blocks="nope", **small)
        elif what.startswith("num_classes"):
            D.detector("fasterrcnn", "acmix_pvt_tiny", int(what.split()[-1]), model_kwargs=small)
        elif what == "kind":
            D.detector("nope", "acmix_pvt_tiny", 3)
        elif what == "dilatable":
            D.dilatable("nope")
        elif what == "arch":
            D.segmentation_model("nope", "acmix_resnet_tiny")
        else:
            D.segmentation_model("DeepLabV3", "acmix_resnet26", output_stride=4)
    return call


def _probe2_api_cases() -> list[Entry]:
    import importlib.util

    smp = importlib.util.find_spec("segmentation_models_pytorch") is not None
    return [
        ("replace_convs default", "ok", _replace_runs(torch.float32, ["0", "2"])),
        ("replace_convs float64 model", "ok", _replace_runs(torch.float64, ["0", "2"])),
        ("replace_convs kernel_size=1 (the 1x1 conv)", "ok", _replace_runs(torch.float32, ["3"], kernel_size=1)),
        ("replace_convs include=[] replaces nothing", "ok", _replace_runs(torch.float32, [], include=[])),
        ("replace_convs include=['2']", "ok", _replace_runs(torch.float32, ["2"], include=["2"])),
        ("replace_convs a string model", "error", _replace("resnet18")),
        ("replace_convs heads=0", "error", _replace(heads=0)),
        ("replace_convs heads=2.5", "error", _replace(heads=2.5)),
        ("replace_convs heads=True", "error", _replace(heads=True)),
        ("replace_convs kernel_size=0", "error", _replace(kernel_size=0)),
        ("replace_convs kernel_size='3'", "error", _replace(kernel_size="3")),
        ("replace_convs kernel_att=4", "error", _replace(kernel_att=4)),
        ("replace_convs include='02' (a string)", "error", _replace(include="02")),
        ("replace_convs include=['9'] (no such conv)", "error", _replace(include=["9"])),
        ("replace_convs bogus ACmix keyword", "error", _replace(bogus=1)),
        ("replace_convs heads callable giving 3 for 8 channels", "error", _replace(heads=lambda n, c: 3)),
        ("replace_convs padding='valid'", "error", _replace(net=_conv(padding="valid"))),
        ("replace_convs stride (2, 1)", "error", _replace(net=_conv(stride=(2, 1)))),
        ("replace_convs twice (the ACmix dep_conv is grouped)", "error", lambda: [_replace(m)() for m in [_net()] * 2]),
        ("export_program of a function", "error", _export("not a module")),
        ("export_program with a numpy example", "error", _export("numpy example")),
        ("export_program with a 3-d example", "error", _export("3-d example")),
        ("export_onnx into a missing folder", "error", _export("missing folder")),
        ("dynamic_input_dims of a garbage file", "error", _export("garbage onnx")),
        ("export_program runs at other sizes", "ok", _export("parity")),
        ("fpn_backbone unknown model", "error", _dense("bad name")),
        ("fpn_backbone reductions=()", "error", _dense("no reductions")),
        ("fpn_backbone out_channels=0", "error", _dense("out_channels 0")),
        ("fpn_backbone extra_blocks='nope'", "error", _dense("extra_blocks")),
        ("detector kind 'nope'", "error", _dense("kind")),
        ("detector num_classes 0", "error", _dense("num_classes 0")),
        ("detector num_classes -1", "error", _dense("num_classes -1")),
        ("dilatable unknown model", "error", _dense("dilatable")),
        *([("segmentation_model arch 'nope'", "error", _dense("arch")),
           ("segmentation_model output_stride 4", "error", _dense("output_stride"))] if smp else []),
    ]
