"""The ACmix model family, registered in timm's registry on ``import acmix``.

One file per family (``acmix_<family>.py``); importing it registers its models.
"""
from . import acmix_pvt, acmix_resnet, acmix_san, acmix_swin, acmix_tiny  # noqa: F401


def __getattr__(name: str):
    """``PAPER_FIGURES``: every family's published figures, merged (model name -> dict with
    ``params_m``, ``params_tol``, ``macs_g`` and ``top1``; see each ``acmix_<family>.py``)."""
    if name == "PAPER_FIGURES":
        import types

        merged: dict[str, dict] = {}
        for module in list(globals().values()):
            if isinstance(module, types.ModuleType) and isinstance(getattr(module, "PAPER_FIGURES", None), dict):
                merged.update(module.PAPER_FIGURES)
        return merged
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
