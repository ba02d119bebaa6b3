"""Pyramid Vision Transformer v1 and PVT-ACmix.

Papers:
* `Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without Convolutions` -
  Wang et al., ICCV 2021 (https://arxiv.org/abs/2102.12122).  Architecture facts from
  github.com/whai362/PVT (branch v1, ``classification/pvt.py``).
* `On the Integration of Self-Attention and Convolution` - Pan et al., CVPR 2022
  (https://arxiv.org/abs/2111.14556), for PVT-ACmix.

PVT v1: four stages with non-overlapping patch embeddings (4, 2, 2, 2; conv +
LayerNorm; a size that is not a multiple of the patch is zero-padded, never
cropped), absolute position embeddings per stage (resized bilinearly for
other input sizes), a class token in stage 4,
dims [64, 128, 320, 512], heads [1, 2, 5, 8], MLP ratios [8, 8, 4, 4],
spatial-reduction ratios [8, 4, 2, 1], depths Tiny [2, 2, 2, 2] / Small
[3, 4, 6, 3], pre-norm blocks, LayerNorm eps 1e-6 in the blocks and the final
norm (1e-5, LayerNorm's default, in the patch embeddings and the spatial
reduction, as PVT v1's reference), qkv bias, final LayerNorm
and the class token as classifier input.  The attention is
:func:`acmix.ops.spatial_reduction.spatial_reduction_attention`.

PVT-ACmix (no public code): the attention path is PVT's spatial-reduction
attention unchanged.  The convolution path reuses the same projections: the
full-resolution ``q`` and the reduced ``k``, ``v`` upsampled (nearest) back
to ``H x W`` give ``3 * heads`` pieces of ``head_dim`` channels, which go
through ACmix's shared convolution path (:func:`acmix.ops.shift_conv`: ``fc``
``3*heads -> 9``, group conv 3x3 ``groups=head_dim`` to ``C``, shift init).
(Full-resolution k, v projections would cost 2.20 / 4.39 GMACs instead of the
paper's 2.0 / 3.9.)

Where the paths meet: ``out = rate1 * proj(att) + rate2 * conv`` -- the
combination is taken *after* ``proj``, so only the attention path is
projected, as in the authors' Swin-ACmix.  The MACs do not decide this: a
combination before ``proj`` (``proj(rate1 * att + rate2 * conv)``) costs exactly
the same (one ``C x C`` projection per token either way); only projecting both
paths separately would add a second projection (about +0.12 / +0.25 GMACs:
depth x C^2 x tokens summed over the stages), which the paper's 2.0 / 3.9 G
rule out.  The class token has no spatial position: its
convolution term is zero (it gets ``rate1 * proj(att)``).  Measured: Tiny
13.40M params / 2.02 GMACs, Small 24.82M / 3.97 GMACs at 224.

Keys follow PVT's (``q``, ``kv``, ``sr``, ``norm``, ``proj``, ``mlp.fc1/fc2``) and
ACmix's (``fc``, ``dep_conv``, ``rate1``, ``rate2``) inside the blocks;
:func:`checkpoint_filter_fn` maps PVT's flat layout (``patch_embed1``,
``pos_embed1``, ``block1.0`` ...) to the ``stages.i`` layout and resizes
position embeddings when the model's input size differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import Tensor, nn

from ..checkpoint_io import unwrap_state_dict
from ..nn.parts import ConvPathMixer, FactoryKwargs, resolve_combination
from ..ops.common import static_sizes
from ..ops.config import Combination, ShiftMode, check_positive
from ..ops.spatial_reduction import SRAWeights, sra_attend, sra_project
from ._builder import no_weight_decay_names, reset_linear_head
from ._checks import check_global_pool, check_model_kwargs, with_input_check

__all__ = ["PAPER_FIGURES", "PyramidVisionTransformerV1", "SRAttention", "checkpoint_filter_fn"]

# Params in M (tolerance as a fraction), MACs in G at 224, ImageNet top-1 (PVT paper / ACmix README).
PAPER_FIGURES: dict[str, dict] = {
    "pvt_v1_tiny": dict(params_m=13.2, params_tol=0.04, macs_g=1.9, top1=75.1),
    "pvt_v1_small": dict(params_m=24.5, params_tol=0.04, macs_g=3.8, top1=79.8),
    "acmix_pvt_tiny": dict(params_m=13.0, params_tol=0.04, macs_g=2.0, top1=78.0),
    "acmix_pvt_small": dict(params_m=25.0, params_tol=0.04, macs_g=3.9, top1=81.7),
}
_POOLS = ("token", "avg", "")


class SRAttention(ConvPathMixer):
    """Spatial-reduction attention (PVT v1), optionally with ACmix's convolution path.

    ``forward(x, size)`` takes ``(B, P + H*W, C)`` tokens (``P`` prefix tokens in
    front, only with ``sr_ratio == 1``) and returns the same shape.  ``norm_eps`` is
    the spatial-reduction LayerNorm's (PVT v1 keeps LayerNorm's default 1e-5 there;
    its blocks use 1e-6).  ``acmix=True`` is ``combination="learned"``; ``combination``
    and ``shift`` are the paper's ablation switches (:class:`acmix.nn.parts.ConvPathMixer`;
    ``"conv"`` keeps the projections the convolution path reads and drops ``proj``).
    """

    def __init__(self, dim: int, num_heads: int = 8, *, sr_ratio: int = 1, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_eps: float = 1e-5, acmix: bool = False,
                 combination: Combination | str | None = None, shift: ShiftMode | str = ShiftMode.GROUPED,
                 kernel_conv: int = 3, rates: tuple[float, float] = (0.5, 0.5),
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        for value, name in ((dim, "dim"), (num_heads, "num_heads"), (sr_ratio, "sr_ratio")):
            check_positive(value, name)
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.sr_ratio, self.norm_eps = sr_ratio, norm_eps
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias, **dd)
        self.attn_drop = attn_drop
        self._init_conv_path(pieces=3 * num_heads, head_dim=self.head_dim, out_channels=dim,
                             kernel_conv=kernel_conv, combination=resolve_combination(acmix, combination),
                             shift=shift, rates=rates, **dd)
        self.acmix = self.has_conv
        if self.has_attention:
            self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, **dd)
            self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.reset_conv_path()

    def weights(self) -> SRAWeights:
        sr, norm = getattr(self, "sr", None), getattr(self, "norm", None)
        return SRAWeights(self.q.weight, self.q.bias, self.kv.weight, self.kv.bias,
                          None if sr is None else sr.weight, None if sr is None else sr.bias,
                          None if norm is None else norm.weight, None if norm is None else norm.bias)

    def conv_path(self, q: Tensor, k: Tensor, v: Tensor, size: tuple[int, int]) -> Tensor:
        """ACmix's convolution path on ``q`` and the (upsampled) reduced ``k``, ``v`` -> ``(B, H*W, C)``."""
        b, heads, _, hd = q.shape
        h, w = size

        def full(t: Tensor) -> Tensor:  # (B, heads, P + H*W, hd) -> (B, heads, hd, H, W), prefix dropped
            return t[:, :, t.shape[2] - h * w:].transpose(-1, -2).reshape(b, heads, hd, h, w)

        def upsampled(t: Tensor) -> Tensor:  # reduced (B, heads, M, hd) -> nearest upsampling to H x W
            if self.sr_ratio == 1:
                return full(t)
            t = t.transpose(-1, -2).reshape(b * heads, hd, h // self.sr_ratio, w // self.sr_ratio)
            return F.interpolate(t, size=(h, w), mode="nearest").reshape(b, heads, hd, h, w)

        out = self.shift_conv(torch.cat([full(q), upsampled(k), upsampled(v)], 1))
        return out.flatten(2).transpose(1, 2)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        q, k, v = sra_project(x, size, self.weights(), heads=self.num_heads, sr_ratio=self.sr_ratio,
                              eps=self.norm_eps)
        att = conv = None
        if self.has_attention:
            att = self.proj(sra_attend(q, k, v, dropout_p=self.attn_drop if self.training else 0.0))
        if self.has_conv:
            conv = self.conv_path(q, k, v, size)
            prefix = x.shape[1] - size[0] * size[1]
            if prefix:  # prefix tokens (the class token) have no convolution term
                conv = F.pad(conv, (0, 0, prefix, 0))
        return self.proj_drop(self.combine(att, conv))

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}, "
                f"combination={self.combination.value}, shift={self.shift.value}")


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0, sr_ratio: int = 1,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6, acmix: bool = False, combination: Combination | str | None = None,
                 shift: ShiftMode | str = ShiftMode.GROUPED, device=None, dtype=None) -> None:
        super().__init__()
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        # the spatial-reduction norm keeps LayerNorm's default eps (PVT v1), not the blocks' norm_eps
        self.attn = SRAttention(dim, num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop,
                                proj_drop=proj_drop, acmix=acmix, combination=combination, shift=shift, **dd)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), size))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: conv ``patch x patch`` / ``patch``, then LayerNorm.

    A size that is not a multiple of the patch is zero-padded at the bottom / right to the next one.
    """

    def __init__(self, in_chs: int, dim: int, patch_size: int, *, norm_eps: float = 1e-5, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, patch_size, stride=patch_size, device=device, dtype=dtype)
        # PVT v1's patch-embedding norm keeps LayerNorm's default eps
        self.norm = nn.LayerNorm(dim, eps=norm_eps, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        p = self.proj.stride[0]
        h, w = x.shape[-2:]
        # zero-pad the bottom / right (as the Swin and ResNet families), never crop; traced, always (maybe a
        # zero-width pad), so that the graph is not specialised to multiples of the patch
        if not static_sizes(h, w) or h % p or w % p:
            x = F.pad(x, (0, (-w) % p, 0, (-h) % p))
        x = self.proj(x)
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size


class PVTStage(nn.Module):
    """Patch embedding, absolute position embedding (with the class token's in the last stage), blocks."""

    def __init__(self, in_chs: int, dim: int, depth: int, *, patch_size: int, grid: tuple[int, int],
                 num_heads: int, mlp_ratio: float, sr_ratio: int, num_prefix_tokens: int = 0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: Sequence[float] = (), norm_eps: float = 1e-6, acmix: bool = False,
                 combination: Combination | str | None = None, shift: ShiftMode | str = ShiftMode.GROUPED,
                 device=None, dtype=None) -> None:
        super().__init__()
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.grad_checkpointing = False
        self.grid, self.num_prefix_tokens = grid, num_prefix_tokens
        self.patch_embed = PatchEmbed(in_chs, dim, patch_size, **dd)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_prefix_tokens + grid[0] * grid[1], dim, **dd))
        self.pos_drop = nn.Dropout(proj_drop)
        dpr = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList([
            Block(dim, num_heads, mlp_ratio=mlp_ratio, sr_ratio=sr_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop,
                  attn_drop=attn_drop, drop_path=dpr[i], norm_eps=norm_eps, acmix=acmix,
                  combination=combination, shift=shift, **dd)
            for i in range(depth)])

    def position_embedding(self, size: tuple[int, int]) -> Tensor:
        """The position embedding for an ``H x W`` map (bilinear resize of the stored grid)."""
        pos = self.pos_embed
        if static_sizes(*size) and tuple(size) == tuple(self.grid):
            return pos  # a traced graph resizes at every size: bilinear to the grid's own size is the identity
        p = self.num_prefix_tokens
        grid = pos[:, p:].reshape(1, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=size, mode="bilinear").flatten(2).transpose(1, 2)
        return torch.cat([pos[:, :p], grid], 1)

    def forward(self, x: Tensor, prefix: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        x, size = self.patch_embed(x)
        if size[0] < 1 or size[1] < 1:
            raise ValueError(f"input too small: stage feature map {size}")
        if prefix is not None:
            x = torch.cat([prefix.expand(x.shape[0], -1, -1), x], 1)
        x = self.pos_drop(x + self.position_embedding(size))
        for blk in self.blocks:
            use_ckpt = self.grad_checkpointing and not torch.jit.is_scripting()
            x = checkpoint(blk, x, size) if use_ckpt else blk(x, size)
        return x, size


class PyramidVisionTransformerV1(nn.Module):
    """PVT v1 (``acmix=False``) or PVT-ACmix (``acmix=True``).

    Args:
        img_size: the input size the position embeddings are stored for (others are resized to).
        patch_sizes, embed_dims, num_heads, mlp_ratios, sr_ratios, depths: per stage.
        global_pool: ``'token'`` (class token, PVT's), ``'avg'`` (mean of the patch tokens) or ``''``.
        acmix: add ACmix's convolution path to every attention layer (``combination="learned"``).
        combination, shift: the paper's ablation switches for every attention layer (:class:`SRAttention`).
        norm_eps: the blocks' and the final LayerNorm's (the patch-embedding and spatial-reduction
            norms keep LayerNorm's default 1e-5, as PVT v1).
        in_chans, num_classes, drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: as in timm.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, *, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "token", patch_sizes: Sequence[int] = (4, 2, 2, 2),
                 embed_dims: Sequence[int] = (64, 128, 320, 512), num_heads: Sequence[int] = (1, 2, 5, 8),
                 mlp_ratios: Sequence[float] = (8, 8, 4, 4), sr_ratios: Sequence[int] = (8, 4, 2, 1),
                 depths: Sequence[int] = (2, 2, 2, 2), qkv_bias: bool = True, norm_eps: float = 1e-6,
                 acmix: bool = False, combination: Combination | str | None = None,
                 shift: ShiftMode | str = ShiftMode.GROUPED, drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        n = len(depths)
        if not (len(patch_sizes) == len(embed_dims) == len(num_heads) == len(mlp_ratios) == len(sr_ratios) == n):
            raise ValueError("patch_sizes, embed_dims, num_heads, mlp_ratios, sr_ratios and depths need the same "
                             f"length, got {len(patch_sizes)}, {len(embed_dims)}, {len(num_heads)}, "
                             f"{len(mlp_ratios)}, {len(sr_ratios)}, {n}")
        if sr_ratios[-1] != 1:
            raise ValueError(f"the last stage carries the class token and needs sr_ratio 1, got {sr_ratios[-1]}")
        img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.global_pool = check_global_pool(global_pool, _POOLS)
        self.num_prefix_tokens = 1
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, prev, cur, reduction = [], in_chans, 0, 1
        self.feature_info: list[dict] = []
        for i in range(n):
            reduction *= patch_sizes[i]
            stages.append(PVTStage(
                prev, embed_dims[i], depths[i], patch_size=patch_sizes[i],
                grid=(img[0] // reduction, img[1] // reduction), num_heads=num_heads[i],
                mlp_ratio=mlp_ratios[i], sr_ratio=sr_ratios[i], num_prefix_tokens=1 if i == n - 1 else 0,
                qkv_bias=qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr[cur:cur + depths[i]], norm_eps=norm_eps, acmix=acmix, combination=combination,
                shift=shift, **dd))
            prev, cur = embed_dims[i], cur + depths[i]
            self.feature_info.append(dict(num_chs=prev, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.ModuleList(stages)
        self.norm: nn.Module = nn.LayerNorm(prev, eps=norm_eps, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, prev, **dd))
        self.num_features = self.head_hidden_size = prev
        self.head: nn.Module = nn.Linear(prev, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """PVT's init (truncated normal 0.02 for linears, embeddings and the class token), then shift init."""
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, SRAttention):
                m.reset_conv_path()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self, ("cls_token", "pos_embed"))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        # no capture group in the stem pattern: timm turns every group into a layer ordinal
        return dict(stem=r"^cls_token|^stages\.0\.(?:patch_embed|pos_embed)",
                    blocks=r"^stages\.(\d+)" if coarse else [
                        (r"^stages\.(\d+)\.(?:patch_embed|pos_embed)", (0,)),  # with the stage's first block
                        (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                        (r"^norm", (99999,)),
                    ])

    def _stages(self) -> list[PVTStage]:
        return cast("list[PVTStage]", list(self.stages))  # a ModuleList of PVTStage, which torch cannot type

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable  # type: ignore[assignment]  # torch types Module.__setattr__ values as Tensor | Module

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.head = reset_linear_head(self, num_classes, global_pool, _POOLS, self.cls_token)

    def _run(self, x: Tensor, stages: Sequence[PVTStage]) -> tuple[Tensor, tuple[int, int], list[tuple]]:
        outs = []
        b = x.shape[0]
        for stage in stages:
            x, size = stage(x, self.cls_token if stage.num_prefix_tokens else None)
            outs.append((x, size, stage.num_prefix_tokens))
            if stage is not stages[-1]:
                x = x[:, stage.num_prefix_tokens:].transpose(1, 2).reshape(b, x.shape[-1], *size)  # b may be 0
        return x, size, outs

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs as ``(B, C, H, W)`` maps (class token dropped; ``norm`` applies the final norm
        to the last stage's)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: PVT gives 'NCHW' features only")
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self._stages() if not stop_early else self._stages()[:max_index + 1]
        x, _, outs = self._run(x, stages)
        intermediates = []
        for i, (t, size, p) in enumerate(outs):
            if i in take:
                if norm and i == len(self.stages) - 1:
                    t = self.norm(t)
                intermediates.append(t[:, p:].transpose(1, 2).reshape(t.shape[0], t.shape[-1], *size))
        if intermediates_only:
            return intermediates
        if len(outs) == len(self.stages):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_norm = prune_head = True
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens ``(B, 1 + H*W, C)`` of the last stage after the final norm (class token first)."""
        x, _, _ = self._run(x, self._stages())
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(1)
        x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, Any], model: PyramidVisionTransformerV1) -> dict[str, Tensor]:
    """Map PVT v1's flat layout (``patch_embed1``, ``pos_embed1``, ``block1.0`` ...) to ``stages.i``,
    and resize position embeddings stored for another input size."""
    from timm.layers import resample_abs_pos_embed

    out = {}
    for k, v in unwrap_state_dict(state_dict).items():
        for old, new in (("patch_embed", "patch_embed"), ("pos_embed", "pos_embed"), ("block", "blocks")):
            head, _, rest = k.partition(".")
            idx = head.removeprefix(old)
            if head.startswith(old) and idx.isdigit():
                k = f"stages.{int(idx) - 1}.{new}" + (f".{rest}" if rest else "")
                break
        if k.startswith("stages.") and k.endswith(".pos_embed"):
            stage = model._stages()[int(k.split(".")[1])] if int(k.split(".")[1]) < len(model.stages) else None
            if stage is not None and v.shape != stage.pos_embed.shape:
                p = stage.num_prefix_tokens
                old_n = v.shape[1] - p
                side = round(old_n**0.5)
                if side * side != old_n:
                    raise ValueError(f"{k}: cannot infer the grid of {old_n} position embeddings")
                v = resample_abs_pos_embed(v, new_size=list(stage.grid), old_size=[side, side],
                                           num_prefix_tokens=p, interpolation="bilinear", antialias=False)
        out[k] = v
    return out


def _create_pvt(variant: str, pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV1:
    check_model_kwargs(variant, kwargs, num_features=4)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return with_input_check(build_model_with_cfg(PyramidVisionTransformerV1, variant, pretrained,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(feature_cls="getter", out_indices=out_indices), **kwargs), variant)


def _cfg(**kwargs: Any) -> dict:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.patch_embed.proj", "classifier": "head", "fixed_input_size": False,
        "license": "apache-2.0", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "pvt_v1_tiny": _cfg(),
    "pvt_v1_small": _cfg(),
    "acmix_pvt_tiny": _cfg(),
    "acmix_pvt_small": _cfg(),
})

_TINY = dict(depths=(2, 2, 2, 2))
_SMALL = dict(depths=(3, 4, 6, 3))


def _merge(base: dict, **kwargs: Any) -> dict:
    return {**base, **kwargs}


@register_model
def pvt_v1_tiny(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV1:
    """PVT v1 Tiny (Wang et al. 2021), 13.2M params."""
    return _create_pvt("pvt_v1_tiny", pretrained, **_merge(_TINY, **kwargs))


@register_model
def pvt_v1_small(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV1:
    """PVT v1 Small (Wang et al. 2021), 24.5M params."""
    return _create_pvt("pvt_v1_small", pretrained, **_merge(_SMALL, **kwargs))


@register_model
def acmix_pvt_tiny(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV1:
    """PVT-ACmix-T (Pan et al. 2022)."""
    return _create_pvt("acmix_pvt_tiny", pretrained, **_merge(_TINY, acmix=True, **kwargs))


@register_model
def acmix_pvt_small(pretrained: bool = False, **kwargs: Any) -> PyramidVisionTransformerV1:
    """PVT-ACmix-S (Pan et al. 2022)."""
    return _create_pvt("acmix_pvt_small", pretrained, **_merge(_SMALL, acmix=True, **kwargs))

