"""The learned path weights of every ACmix layer (paper Fig. 5): alpha, beta and beta / alpha.

Every family names its weights ``rate1`` (alpha, the attention path) and ``rate2``
(beta, the convolution path) inside the module that mixes the two paths, so
the rates are found by parameter name in a state dict, whatever the family and
whatever file the weights come from.  Layers appear in state-dict order, which
is the network's depth order for every model here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .report import pyplot, write_table

__all__ = ["extract_rates", "load_state_dict", "plot_rates", "write_rates"]


def load_state_dict(source: str | Path, *, use_ema: bool = False) -> dict[str, Tensor]:
    """Weights from ``.safetensors``, one of our checkpoints (``last.pth``/``best.pth``) or a bare state dict."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from ..train.checkpoint import extract_state_dict, load_checkpoint

    return extract_state_dict(load_checkpoint(path), use_ema=use_ema)


def extract_rates(source: nn.Module | Mapping[str, Tensor] | str | Path) -> list[dict[str, Any]]:
    """One row per ACmix layer: ``layer`` (0-based), ``name`` (module path), ``alpha``, ``beta``, ``beta_over_alpha``.

    ``source``: a model, a state dict, or a checkpoint path (see :func:`load_state_dict`).
    Raises ``ValueError`` when there is no ``rate1``/``rate2`` pair (e.g. a single-path model).
    """
    if isinstance(source, nn.Module):
        state = source.state_dict()
    elif isinstance(source, (str, Path)):
        state = load_state_dict(source)
    else:
        state = dict(source)
    rows: list[dict[str, Any]] = []
    for key, alpha in state.items():
        if not (key == "rate1" or key.endswith(".rate1")):
            continue
        prefix = key[: -len("rate1")]
        beta = state.get(prefix + "rate2")
        if beta is None:
            raise ValueError(f"{key} has no matching {prefix}rate2")
        a, b = float(alpha.float().mean()), float(beta.float().mean())
        rows.append({"layer": len(rows), "name": prefix.rstrip(".") or "(root)", "alpha": a, "beta": b,
                     "beta_over_alpha": b / a if a != 0 else float("inf")})
    if not rows:
        raise ValueError("no ACmix rates (parameters named rate1/rate2) in these weights")
    return rows


def plot_rates(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *, title: str = "") -> Path:
    """Fig. 5 style: alpha, beta and beta/alpha against layer depth, one line per run (e.g. per seed)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for label, rows in runs.items():
        layers = [r["layer"] for r in rows]
        for ax, key in zip(axes, ("alpha", "beta", "beta_over_alpha")):
            ax.plot(layers, [r[key] for r in rows], marker="o", ms=3, label=label)
    from matplotlib.ticker import MaxNLocator

    for ax, name in zip(axes, ("alpha (attention)", "beta (convolution)", "beta / alpha")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[2].axhline(1.0, color="gray", lw=0.8, ls="--")
    if len(runs) > 1:
        axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_rates(runs: Mapping[str, Sequence[Mapping[str, Any]]], folder: str | Path, *, name: str = "rates",
                title: str = "Learned path weights (Fig. 5)", meta: Mapping[str, Any] | None = None
                ) -> dict[str, Path]:
    """Table (``run`` column added when there are several) and plot of :func:`extract_rates` results."""
    rows = [{"run": label, **r} if len(runs) > 1 else dict(r) for label, rows_ in runs.items() for r in rows_]
    notes = ["alpha = rate1 (attention path), beta = rate2 (convolution path); beta/alpha > 1 favours "
             "convolution. Paper, Fig. 5: convolution favoured early, attention late."]
    paths = write_table(folder, name, rows, title=title, notes=notes, meta=meta)
    paths["png"] = plot_rates(runs, Path(folder) / f"{name}.png", title=title)
    return paths
