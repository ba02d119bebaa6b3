"""The ACmix model family, registered in timm's registry on ``import acmix``.

One file per family (``acmix_<family>.py``); importing it registers its models.
"""
from . import acmix_pvt, acmix_san, acmix_tiny  # noqa: F401
