"""Small members of every ACmix family (few blocks, narrow widths) for the dense-task tests."""

from __future__ import annotations

# name -> kwargs for timm.create_model; ResNet-ACmix has no width/depth arguments and runs as is.
TINY = {
    "acmix_resnet26": {},
    "acmix_san10": dict(layers=(1, 1, 1, 1, 1), widths=(32, 32, 64, 64, 128), stem_chs=16),
    "acmix_pvt_tiny": dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 40, 64), num_heads=(1, 2, 5, 8)),
    "acmix_swin_tiny": dict(depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 2, 4, 8)),
}
FAMILIES = list(TINY)
