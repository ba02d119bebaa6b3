"""``acmix paper ...``: the paper's analyses, each writing Markdown + CSV + JSON (+ PNG) into ``--out``.

``stage-costs`` (Tab. 1), ``shift-speed`` (Tab. 7 speed), ``family-speed`` (Tab. 5),
``ablation`` (Tab. 6 and Tab. 7 accuracy, with seeds) and ``rates`` (Fig. 5).
Each is a thin layer over :mod:`acmix.analysis`; ``--quick`` runs a tiny size
(for tests and a first look: its numbers are not results).
"""

from __future__ import annotations

import argparse
import json
import platform
from typing import Any, cast

from acmix.argtypes import nonnegative_int, positive_int

__all__ = ["add_parser", "run"]


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``paper`` and its sub-commands on the ``acmix`` parser."""
    parser = subparsers.add_parser("paper", help="reproduce the paper's analyses (Tab. 1, 5, 6, 7, Fig. 5)")
    parser.set_defaults(func=run)
    sub = parser.add_subparsers(dest="paper_command", required=True)

    def common(p: argparse.ArgumentParser, name: str) -> None:
        p.add_argument("--out", help=f"output folder (default runs/paper/{name}, with --quick {name}_quick)")
        p.add_argument("--quick", action="store_true", help="a tiny size, for tests (not a result)")
        p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")

    p = sub.add_parser("stage-costs", help="Tab. 1: params / MACs / time of Stage I vs II")
    common(p, "stage_costs")
    p.add_argument("--model", help="a registered model (default: the ResNet-50 stage shapes)")
    p.add_argument("--img-size", type=positive_int, help="input size (default: 224, or the model's)")
    p.add_argument("--batch", type=positive_int, default=8, help="batch of the timing")
    p.add_argument("--rounds", type=positive_int, default=5, help="timing rounds (median)")
    p.add_argument("--no-time", action="store_true", help="analytic counts only")
    p.add_argument("--strided-attention", choices=("subsample", "pool"), default="subsample",
                   help="how a strided attention layer is counted: this library's query subsampling, or "
                        "SASA's attend-then-pool (the paper's ResNet-50 figure)")

    p = sub.add_parser("shift-speed", help="Tab. 7: speed of the four shift implementations")
    common(p, "shift_speed")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--rounds", type=positive_int, default=5)

    p = sub.add_parser("family-speed", help="Tab. 5: throughput of each ACmix model and its baseline")
    common(p, "family_speed")
    p.add_argument("--models", nargs="+", help="model names (default: the ACmix models and their baselines)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--img-size", type=positive_int, default=224)
    p.add_argument("--rounds", type=positive_int, default=5)

    p = sub.add_parser("ablation", help="Tab. 6 / Tab. 7: train each variant for N seeds, mean +- std")
    common(p, "ablation")
    p.add_argument("--variants", nargs="+", help="learned fixed attention conv (Tab. 6), tensor fixed_kernel "
                                                 "learnable grouped (Tab. 7); default all")
    p.add_argument("--seeds", type=int, default=3, help="seeds per variant (0, 1, ...)")
    p.add_argument("--data", default="fmnist", help="'fmnist' (Debian package), an IDX folder or an "
                                                    "ImageFolder root with train/ and val/")
    p.add_argument("--img-size", type=positive_int, help="input size for ImageFolder data (default 28)")
    p.add_argument("--epochs", type=positive_int, help="epochs per run (default: the recipe's)")
    p.add_argument("--threads", type=nonnegative_int, default=0, help="torch threads (0: PyTorch's default)")
    p.add_argument("--set", nargs="+", type=_setting, default=[], metavar="KEY=VALUE",
                   help="training settings over the recipe, VALUE as JSON or a plain string: batch_size=64 "
                        "opt=sgd scale=[0.5,1]")
    p.add_argument("--report-only", action="store_true", help="write the report from finished runs; train nothing")

    p = sub.add_parser("rates", help="Fig. 5: alpha, beta, beta/alpha per layer of checkpoints")
    p.add_argument("checkpoints", nargs="+", help=".safetensors, last.pth/best.pth or bare state dicts")
    p.add_argument("--labels", nargs="+", help="one label per checkpoint (default: the file paths)")
    p.add_argument("--out", default="runs/paper/rates", help="output folder")
    return parser


def _writable(folder: str) -> None:
    """``--out`` created and writable, before the work (imported here: building the parser loads no torch)."""
    from acmix.train.checkpoint import check_writable

    check_writable(folder, "--out folder")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _meta(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    import torch

    return {"command": f"acmix paper {args.paper_command}",
            "args": {k: v for k, v in vars(args).items() if k not in ("command", "paper_command")},
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None, **extra}


def _stage_costs(args: argparse.Namespace) -> None:
    from acmix.analysis.report import write_table
    from acmix.analysis.stage_costs import measure_time_share, model_layers, resnet50_layers, stage_table

    device = _device(args.device)
    layers = None
    if args.model:
        import timm

        from acmix.analysis.family_stages import family_stage_costs
        from acmix.models._checks import known_model

        if not known_model(args.model):
            raise ValueError(f"--model {args.model!r} is not a registered timm model")
        model = timm.create_model(args.model)
        chans, native = cast("dict[str, Any]", model.pretrained_cfg)["input_size"][:2]  # timm sets a dict
        img = min(args.img_size or native, 64 if args.quick else 1 << 30)
        what = f"{args.model} at {img}x{img}"
        rows = family_stage_costs(model, (chans, img, img))
        paths = write_table(args.out, "family_stages", rows, title=f"Measured Stage I / II MACs: {what}",
                            notes=FAMILY_NOTES, meta=_meta(args))
        print(f"{args.model}: Stage I {rows[-1]['attention_stage1_share']:.1%} of the attention layer's MACs, "
              f"{rows[-1]['acmix_stage1_share']:.1%} of ACmix's; wrote {paths['md']}")
        try:
            layers = model_layers(model, (chans, img, img))
        except ValueError:
            return  # not the ResNet-form layer: the measured split is all there is
    else:
        img = 64 if args.quick else args.img_size or 224
        layers = resnet50_layers(img)
        what = f"ResNet-50 stage shapes at {img}x{img}"
    shares = None
    if not args.no_time:
        shares = measure_time_share(layers, batch=1 if args.quick else args.batch,
                                    rounds=1 if args.quick else args.rounds, device=device)
    rows = stage_table(layers, shares, strided_attention=args.strided_attention)
    notes = ["MMACs per image; Stage II counts the window attention (logits and weighted sum) that FLOP "
             "counters miss; position encoding left out, as in the paper.",
             "Paper, Tab. 1 (ResNet-50): 99% of convolution's and 83% of self-attention's compute in Stage I.",
             f"Strided attention layers counted as '{args.strided_attention}' ('subsample': this library attends "
             f"from the subsampled queries; 'pool': SASA attends at input resolution, then pools)."]
    if shares is not None:
        notes.append(f"stage1_time_share: measured forward time on {device} (batch "
                     f"{1 if args.quick else args.batch}); Stage I = the 1x1 projection(s).")
    paths = write_table(args.out, "stage_costs", rows, title=f"Stage I vs Stage II costs: {what}", notes=notes,
                        meta=_meta(args, device=device))
    _print_totals(rows)
    print(f"wrote {paths['md']}")


FAMILY_NOTES = [
    "MACs of one forward pass (batch 1) booked by the weights each operation reads: stage1 = input "
    "projections (q, k, v; PVT's spatial reduction), conv_path = fc + group conv, out_proj = the output "
    "projection, attention = the rest of the layer (logits, weights, aggregation, position terms).",
    "attention_stage1_share = stage1 / (stage1 + attention): the attention layer without the convolution "
    "path; acmix_stage1_share = stage1 / (stage1 + attention + conv_path); out_proj in neither.",
]


def _print_totals(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r["layer"] == "total":
            t = r.get("stage1_time_share")
            print(f"{r['operator']:>15}: Stage I {r['stage1_mac_share']:.1%} of MACs, "
                  f"{r['stage1_param_share']:.1%} of params" + (f", {t:.1%} of time" if t is not None else ""))


def _shift_speed(args: argparse.Namespace) -> None:
    from acmix.analysis.report import write_table
    from acmix.analysis.speed import STAGE_SHAPES, shift_speed

    device = _device(args.device)
    shapes = [(c // 8, max(hw // 4, 3)) for c, hw in STAGE_SHAPES[:2]] if args.quick else STAGE_SHAPES
    rows = shift_speed(shapes=shapes, batch=1 if args.quick else args.batch, rounds=1 if args.quick else args.rounds,
                       device=device)
    notes = ["Paper, Tab. 7: group-convolution shifts are much faster than tensor shifts.",
             "tensor and fixed compute the same function; learnable has one kernel per head_dim group, grouped "
             "(the default) one per output channel."]
    paths = write_table(args.out, "shift_speed", rows, title=f"Shift implementations: speed on {device}",
                        notes=notes, meta=_meta(args, device=device))
    print(paths["md"].read_text())


def _family_speed(args: argparse.Namespace) -> None:
    from acmix.analysis.report import write_table
    from acmix.analysis.speed import family_speed, pair_ratios

    device = _device(args.device)
    kwargs: dict[str, Any] = {"device": device, "batch_size": args.batch_size, "img_size": args.img_size,
                              "rounds": args.rounds}
    if args.quick:
        kwargs.update(batch_size=1, img_size=64, rounds=1, warmup=0, modes=("infer",))
    rows = family_speed(args.models, **kwargs)
    meta = _meta(args, device=device)
    write_table(args.out, "family_speed", rows, title=f"Model throughput on {device}", meta=meta)
    ratios = pair_ratios(rows)
    paths = write_table(args.out, "family_vs_baseline", ratios, title=f"ACmix models vs their baselines on {device}",
                        notes=["Paper, Tab. 5: measured on Ascend 910 / MindSpore; here on this device."],
                        meta=meta)
    print(paths["md"].read_text())


def _ablation(args: argparse.Namespace) -> None:
    from acmix.analysis.ablation import VARIANTS, run_ablation, write_report

    overrides: dict[str, Any] = {"data": args.data, "device": args.device, "threads": args.threads, **dict(args.set)}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.img_size:
        from acmix.train.data import inspect_data

        overrides["input_size"] = [inspect_data(args.data).in_chans, args.img_size, args.img_size]
    variants = args.variants or list(VARIANTS)
    results = run_ablation(args.out, variants=variants, seeds=args.seeds, quick=args.quick,
                           overrides=overrides, log=print, train=not args.report_only)
    paths = write_report(results, args.out, variants=variants, meta=_meta(args))
    print(paths["md"].read_text())


def _rates(args: argparse.Namespace) -> None:
    from acmix.analysis.rates import extract_rates, write_rates

    labels = args.labels or args.checkpoints
    if len(labels) != len(args.checkpoints):
        raise ValueError(f"--labels has {len(labels)} entries for {len(args.checkpoints)} checkpoints")
    runs = {label: extract_rates(path) for label, path in zip(labels, args.checkpoints)}
    _writable(args.out)
    paths = write_rates(runs, args.out, meta={"checkpoints": args.checkpoints})
    print(paths["md"].read_text())


def run(args: argparse.Namespace) -> int:
    """Run the ``acmix paper`` sub-command in ``args``."""
    if args.out is None:  # quick runs never land in (or resume from) a real run's folder
        name = args.paper_command.replace("-", "_")
        args.out = f"runs/paper/{name}{'_quick' if getattr(args, 'quick', False) else ''}"
    if args.paper_command != "rates":  # rates: after reading the checkpoints (quick), not into a default folder
        _writable(args.out)
    commands = {"stage-costs": _stage_costs, "shift-speed": _shift_speed, "family-speed": _family_speed,
                "ablation": _ablation, "rates": _rates}
    commands[args.paper_command](args)
    return 0
