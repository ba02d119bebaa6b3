"""Swin-ACmix and Conv-Swin, as timm models built from timm's Swin pieces.

Paper: "On the Integration of Self-Attention and Convolution", Xuran Pan, Chunjiang Ge,
Rui Lu, Shiji Song, Guanfu Chen, Zeyi Huang, Gao Huang, CVPR 2022 (arXiv:2111.14556).
Swin: Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021.

Every Swin block's window attention becomes ACmix (the authors' forward order,
``docs/models.md``): the ``qkv`` linear runs on the whole (padded, cyclically
shifted) map; the convolution path reads qkv as ``3 * heads`` pieces of
``head_dim`` channels, mixes them with ``fc`` (``3 * heads -> 9``, with bias) and
shifts and sums them with a ``groups=head_dim`` 3x3 conv (``dep_conv``, no bias,
shift init) with zero padding (:class:`acmix.nn.parts.ConvPathMixer`); the window
attention path is Swin's, up to ``proj``; the block then takes ``proj_drop(rate1 *
att + rate2 * conv)`` and rolls back.  ``conv_swin_tiny`` keeps only the
convolution path (the paper's Conv-Swin-T, Tab. 6: no ``proj``, no relative
position bias); ``combination`` and ``shift`` switch every block (Tab. 6 / 7).

Built on timm's Swin: :class:`timm.layers.PatchEmbed` (NHWC, dynamic padding),
timm's ``PatchMerging``, and
:class:`SwinACmixBlock`, a ``SwinTransformerBlock`` whose attention step is
overridden (timm partitions windows before ``attn``; the convolution path needs
the whole shifted map).  Two pieces stay ours, because the parameter layout is
the authors' (patch merging at the END of a stage as ``layers.i.downsample``,
``head`` a plain linear) so that their checkpoints load, and save, with no
renaming: the stage (timm's merges at its start and builds timm's own block)
and the model.  timm's Swin layout (``head.fc``, merging at the start) is mapped
by :func:`checkpoint_filter_fn`.  ``relative_position_index`` and ``attn_mask``
are not stored: both are rebuilt for the input at hand, so the model runs at any
input size; those keys in a checkpoint are ignored.

Window, shift and padding at any size: a map no larger than the window is one
window, unshifted (at 224x224 exactly the authors' last stage).  A map that is
not a multiple of the window is zero-padded after ``norm1`` at the bottom /
right, *then* cyclically shifted (pad-then-roll, as Swin's detection backbone);
timm rolls first and pads after.  The two are identical whenever no padding is
needed -- every stage at 224x224, and any size whose maps are multiples of the
window, where the block is exactly the authors' (tested) -- and differ
otherwise: after roll-then-pad the wrapped rows sit *before* the padding while
the shifted-window mask, built for the padded map, expects them at its end, so
a few pairs of rows from opposite borders attend to each other unmasked.
Pad-then-roll keeps the mask exact (``tests/models/test_swin.py``).

Export: the window, shift, padding and mask are computed from the sizes without
a Python branch on them (``torch.sym_min``; padding and roll as gathers; the mask
from ``arange`` comparisons), windows are partitioned with explicit counts, and
SDPA gets 4-D inputs, which the dynamo ONNX exporter converts
(``tests/models/test_swin_export.py``).  ``torch.export`` with dynamic H and W
still specialises: each stage's size is a nested ceil-division of H and W, and the
symbolic solver cannot prove the windowing's size-1 and bound checks on it.

Loading (``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))``)
reads the file in the builder with :func:`acmix.checkpoint_io.load_checkpoint_file` (weights
only; a full training dict with a pickled yacs config is read through an
allow-list, nothing else is unpickled).  Plain Swin weights initialise Swin-ACmix
with only the ACmix extras (``attn.fc``, ``attn.dep_conv``, ``attn.rate1/2``) left
at their initialisation.  :func:`convert_checkpoint` writes a bare state dict
once, for tools that load with plain ``torch.load``.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import PatchEmbed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
from torch import Tensor, nn

from ..checkpoint_io import load_checkpoint_file, save_weights, unwrap_state_dict
from ..nn.parts import ConvPathMixer, FactoryKwargs
from ..ops import Combination, ShiftMode
from ..ops.config import check_positive
from ._builder import check_global_pool, fill_missing, no_weight_decay_names, reset_linear_head
from ._checks import check_model_kwargs, with_input_check

__all__ = [
    "PAPER_FIGURES",
    "SwinACmix",
    "SwinACmixBlock",
    "WindowAttentionACmix",
    "checkpoint_filter_fn",
    "convert_checkpoint",
]

_logger = logging.getLogger(__name__)

_POOLS = ("", "avg")
ACMIX_EXTRA_SUFFIXES = ("attn.fc.weight", "attn.fc.bias", "attn.dep_conv.weight", "attn.rate1", "attn.rate2")


def relative_position_index(wh: int, ww: int, window: int, device: torch.device | None = None) -> Tensor:
    """Index into a ``(2 * window - 1) ** 2`` bias table for a ``wh x ww`` window (``wh, ww <= window``).

    timm's ``get_relative_position_index`` sizes the table by the window itself; a map
    smaller than the window needs the full window's table, indexed here.
    """
    ys, xs = torch.meshgrid(torch.arange(wh, device=device), torch.arange(ww, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :] + window - 1) * (2 * window - 1) + xs[:, None] - xs[None, :] + window - 1


def axis_window(size: int, window: int, shift: int) -> tuple[int, int]:
    """``(window, shift)`` along an axis of ``size``: ``(size, 0)`` if ``size <= window``, else ``(window, shift)``.

    Written with ``torch.sym_min`` rather than a comparison, so that a symbolic ``size``
    (``torch.export``, ``torch.compile(dynamic=True)``) is not guarded on either regime.
    """
    win = torch.sym_min(size, window)
    big = torch.sym_min(size, window + 1) - win  # 1 iff size > window
    return win, shift * big  # type: ignore[return-value]  # SymInts where size is symbolic, ints otherwise


def shifted_window_mask(h: int, w: int, wh: int, ww: int, sh: int, sw: int, *,
                        device: torch.device | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Swin's ``(nW, N, N)`` mask for a cyclically shifted ``h x w`` map: 0 within a region, -100 across.

    ``h, w`` are multiples of ``wh, ww``.  Built with tensor ops from the (possibly symbolic) sizes:
    the regions are the rows before the last window, the last window's first ``wh - sh`` rows and
    the last ``sh`` rows (one region when ``sh == 0``), and likewise along ``w``.
    """
    def regions(size: int, win: int, shift: int) -> Tensor:
        ids = torch.arange(size, device=device)
        return (ids >= size - win).long() + (ids >= size - shift).long()

    img = regions(h, wh, sh)[:, None] * 3 + regions(w, ww, sw)[None, :]
    nh, nw = h // wh, w // ww
    win = img.view(nh, wh, nw, ww).transpose(1, 2).contiguous().view(nh * nw, wh * ww)  # (nW, N), windows row-major
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros(diff.shape, device=device, dtype=dtype).masked_fill(diff != 0, -100.0)


# ----------------------------------------------------------------------------- blocks

class WindowAttentionACmix(ConvPathMixer):
    """Swin's window attention mixed with ACmix's convolution path (authors' ``WindowAttention_acmix``).

    ``forward`` takes the whole ``(B, H, W, C)`` map (already padded and shifted by
    the block, ``H`` and ``W`` multiples of the window ``(wh, ww)``) and returns the
    same shape.  ``combination``: ``"learned"`` (ACmix), ``"fixed"`` (rates as
    buffers), ``"attention"`` (plain Swin) or ``"conv"`` (Conv-Swin); ``shift`` as
    :class:`acmix.nn.parts.ConvPathMixer`.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, *, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, kernel_conv: int = 3,
                 combination: Combination | str = Combination.LEARNED, shift: ShiftMode | str = ShiftMode.GROUPED,
                 rates: tuple[float, float] = (0.5, 0.5),
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.dim, self.num_heads, self.window_size = dim, num_heads, window_size
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self._init_conv_path(pieces=3 * num_heads, head_dim=self.head_dim, out_channels=dim,
                             kernel_conv=kernel_conv, combination=combination, shift=shift, rates=rates,
                             fc_bias=True, **dd)
        if self.has_attention:
            self.relative_position_bias_table = nn.Parameter(torch.empty((2 * window_size - 1) ** 2, num_heads, **dd))
            self.attn_drop = nn.Dropout(attn_drop)
            self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Relative position bias ~ N(0, 0.02), then the convolution path's init (shift init, rates)."""
        if self.has_attention:
            trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.reset_conv_path()

    def _attention(self, qkv: Tensor, wh: int, ww: int, mask: Tensor | None) -> Tensor:
        b, h, w, _ = qkv.shape
        nh, nw, n, heads, hd = h // wh, w // ww, wh * ww, self.num_heads, self.head_dim
        # (3, B, nh, nw, heads, wh, ww, D)
        win = qkv.view(b, nh, wh, nw, ww, 3, heads, hd).permute(5, 0, 1, 3, 6, 2, 4, 7)
        index = relative_position_index(wh, ww, self.window_size, device=qkv.device)
        bias = self.relative_position_bias_table[index.view(n * n)].view(n, n, heads).permute(2, 0, 1).to(qkv.dtype)
        # 4-D SDPA inputs (ONNX takes no 5-D): windows in the batch when every window shares the bias;
        # with a per-window mask, windows x heads as the "heads" axis, broadcast over the batch
        if mask is None:
            q, k, v = win.contiguous().view(3, b * nh * nw, heads, n, hd).unbind(0)
            bias = bias.unsqueeze(0)  # (1, heads, N, N)
        else:
            q, k, v = win.contiguous().view(3, b, nh * nw * heads, n, hd).unbind(0)
            bias = (bias.unsqueeze(0) + mask.to(qkv.dtype).unsqueeze(1)).contiguous().view(1, nh * nw * heads, n, n)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        out = out.view(b * nh * nw, heads, n, hd).transpose(1, 2).contiguous().view(b * nh * nw, n, self.dim)
        out = self.proj(out).view(b, nh, nw, wh, ww, self.dim)  # heads concatenated, projected per window
        return out.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, self.dim)

    def forward(self, x: Tensor, window: tuple[int, int] | None = None, mask: Tensor | None = None) -> Tensor:
        wh, ww = window if window is not None else (self.window_size, self.window_size)
        qkv = self.qkv(x)
        att = self._attention(qkv, wh, ww, mask) if self.has_attention else None
        conv = None
        if self.has_conv:
            b, h, w, _ = qkv.shape
            pieces = qkv.view(b, h, w, 3 * self.num_heads, self.head_dim).permute(0, 3, 4, 1, 2)
            conv = self.shift_conv(pieces).permute(0, 2, 3, 1)
        return self.proj_drop(self.combine(att, conv))

    def uncounted_macs(self, inputs: tuple, output: Tensor) -> int:
        """None: the window attention is matmuls (SDPA), which FLOP counters see."""
        return 0

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size}, "
                f"combination={self.combination.value}, shift={self.shift.value}")


class SwinACmixBlock(SwinTransformerBlock):
    """timm's Swin block with :class:`WindowAttentionACmix` and an attention step on the whole shifted map.

    ``x + DropPath(attn(norm1(x)))`` (shifted windows), then ``x + DropPath(mlp(norm2(x)))``.
    The window and the cyclic shift are chosen per input: ``window_size`` and
    ``shift_size`` along each axis longer than the window, one unshifted window along
    an axis no longer than it; maps are padded, then rolled (module docstring).  timm's
    ``set_input_size`` / ``attn_mask`` do not apply: nothing here depends on a fixed input size.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, shift_size: int = 0,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm, combination: Combination | str = Combination.LEARNED,
                 shift: ShiftMode | str = ShiftMode.GROUPED,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size={shift_size} must be in [0, window_size={window_size})")
        # always_partition: keep window_size / shift_size as given (the step below picks them per input);
        # dynamic_mask: no mask buffer for a fixed resolution; head_dim=1: the WindowAttention timm builds
        # here is replaced just below, so keep it small
        super().__init__(dim, (window_size, window_size), num_heads=num_heads, head_dim=1, window_size=window_size,
                         shift_size=shift_size, always_partition=True, dynamic_mask=True, mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, proj_drop=drop, attn_drop=attn_drop, drop_path=drop_path,
                         act_layer=act_layer, norm_layer=norm_layer, device=device, dtype=dtype)
        # replaces timm's `attn` (not a subclass of timm's WindowAttention, so add_module rather than `=`)
        self.add_module("attn", WindowAttentionACmix(dim, num_heads, window_size, qkv_bias=qkv_bias,
                                                     attn_drop=attn_drop, proj_drop=drop, combination=combination,
                                                     shift=shift, device=device, dtype=dtype))

    def _attn(self, x: Tensor) -> Tensor:
        # every size below may be symbolic (export, dynamic compile): no branch on it, no int taken from it
        _, h, w, _ = x.shape
        wh, sh = axis_window(h, self.window_size[0], self.shift_size[0])
        ww, sw = axis_window(w, self.window_size[1], self.shift_size[1])
        hp, wp = (h + wh - 1) // wh * wh, (w + ww - 1) // ww * ww
        # pad, then roll (the mask is exact for the padded map), as gathers: no slice bound to guard on
        x = _pad_roll(_pad_roll(x, 1, h, hp, sh), 2, w, wp, sw)
        mask = None
        if self.shift_size[0] or self.shift_size[1]:  # the block's configuration; sh, sw may still be 0
            mask = shifted_window_mask(hp, wp, wh, ww, sh, sw, device=x.device, dtype=x.dtype)
        x = self.attn(x, (wh, ww), mask)
        return _unroll_crop(_unroll_crop(x, 1, h, hp, sh), 2, w, wp, sw)


def _pad_roll(x: Tensor, dim: int, size: int, padded: int, shift: int) -> Tensor:
    """``x`` zero-padded from ``size`` to ``padded`` along ``dim``, then rolled by ``-shift`` (``torch.roll``)."""
    if _static_identity(size, padded, shift):
        return x
    src = (torch.arange(padded, device=x.device) + shift) % padded
    shape = [1] * x.dim()
    shape[dim] = padded
    return torch.where((src < size).view(shape), x.index_select(dim, src.clamp(max=size - 1)), 0)


def _unroll_crop(x: Tensor, dim: int, size: int, padded: int, shift: int) -> Tensor:
    """The inverse of :func:`_pad_roll`: roll back by ``shift``, keep the first ``size`` entries along ``dim``."""
    if _static_identity(size, padded, shift):
        return x
    return x.index_select(dim, (torch.arange(size, device=x.device) - shift) % padded)


def _static_identity(size: int, padded: int, shift: int) -> bool:
    """True for plain ints (eager) that need no padding and no shift: the gathers would copy ``x`` unchanged."""
    return all(type(v) is int for v in (size, padded, shift)) and size == padded and shift == 0


class SwinACmixStage(nn.Module):
    """``blocks`` (alternating unshifted / shifted windows), then ``downsample`` (None in the last stage).

    timm's ``SwinTransformerStage`` merges patches at its start (another key layout)
    and builds timm's own block, hence this stage.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, *, downsample: bool,
                 drop_path: list[float], norm_layer: type[nn.Module] = nn.LayerNorm,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 **block_kwargs: Any) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.blocks = nn.Sequential(*[
            SwinACmixBlock(dim, num_heads, window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                           drop_path=drop_path[i], norm_layer=norm_layer, device=device, dtype=dtype,
                           **block_kwargs)
            for i in range(depth)
        ])
        self.downsample = PatchMerging(dim, norm_layer=norm_layer, device=device, dtype=dtype) if downsample else None

    def forward_blocks(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_blocks(x)
        return x if self.downsample is None else self.downsample(x)


# ----------------------------------------------------------------------------- model

class SwinACmix(nn.Module):
    """Swin Transformer with ACmix blocks, in the authors' parameter layout.

    Args:
        in_chans, num_classes, global_pool (``"avg"`` or ``""``): as in timm.
        embed_dim, depths, num_heads, window_size, mlp_ratio, qkv_bias: Swin's sizes.
        combination: ``"learned"`` (Swin-ACmix), ``"fixed"``, ``"attention"`` (plain
            Swin, original layout) or ``"conv"`` (Conv-Swin).  shift: the convolution
            path's shift (``"grouped"``, ``"learnable"``, ``"fixed"``, ``"tensor"``).
        drop_rate, proj_drop_rate, attn_drop_rate, drop_path_rate: regularisation.
        img_size: accepted for timm compatibility; the model runs at any size.
    """

    def __init__(self, in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg",
                 embed_dim: int = 96, depths: tuple[int, ...] = (2, 2, 6, 2),
                 num_heads: tuple[int, ...] = (3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, combination: Combination | str = Combination.LEARNED,
                 shift: ShiftMode | str = ShiftMode.GROUPED, drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, patch_size: int = 4, img_size: Any = None,
                 norm_layer: type[nn.Module] = nn.LayerNorm,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths={depths!r} and num_heads={num_heads!r} differ in length")
        check_positive(window_size, "window_size")
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.num_classes, self.drop_rate = num_classes, drop_rate
        self.global_pool = check_global_pool(global_pool, _POOLS)
        self.num_layers = len(depths)
        self.num_features = self.head_hidden_size = int(embed_dim * 2 ** (self.num_layers - 1))
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(None, patch_size, in_chans, embed_dim, norm_layer=norm_layer, output_fmt="NHWC",
                                      strict_img_size=False, dynamic_img_pad=True, **dd)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear, as Swin
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = embed_dim * 2**i
            start = sum(depths[:i])
            self.layers.append(SwinACmixStage(
                dim, depth, heads, window_size, downsample=i < self.num_layers - 1,
                drop_path=dpr[start:start + depth], norm_layer=norm_layer, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, drop=proj_drop_rate, attn_drop=attn_drop_rate, combination=combination,
                shift=shift, **dd))
            self.feature_info.append(dict(num_chs=dim, reduction=patch_size * 2**i, module=f"layers.{i}"))
        self.norm = norm_layer(self.num_features, **dd)
        self.head_drop = nn.Dropout(drop_rate)
        self.head: nn.Module = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        for m in self.modules():
            if isinstance(m, WindowAttentionACmix):
                m.reset_parameters()  # shift init and rates, after the generic init

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # --- timm interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self, ("relative_position_bias_table",))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)" if coarse else [
                (r"^layers\.(\d+)\.downsample", (99999,)),  # merges at the END of stage i: its last block
                (r"^layers\.(\d+)\.\w+\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.layers:
            stage.grad_checkpointing = enable  # type: ignore[assignment]  # torch types Module.__setattr__ values as Tensor | Module

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.head = reset_linear_head(self, num_classes, global_pool, _POOLS, self.patch_embed.proj.weight)

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Stage outputs (before each stage's patch merging) as NCHW maps, timm's contract."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not one of 'NCHW', 'NHWC'")
        take, max_index = feature_take_indices(len(self.layers), indices)
        stages = self.layers[:max_index + 1] if stop_early else self.layers
        x = self.pos_drop(self.patch_embed(x))
        intermediates = []
        last = len(self.layers) - 1
        for i, stage in enumerate(cast("list[SwinACmixStage]", stages)):  # a ModuleList of stages
            x = stage.forward_blocks(x)
            if i in take:
                inter = self.norm(x) if norm and i == last else x
                intermediates.append(inter.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else inter)
            if stage.downsample is not None:
                x = stage.downsample(x)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        self.layers[-1].downsample = None  # type: ignore[assignment]  # torch types Module.__setattr__ values as Tensor | Module
        if prune_norm or max_index < self.num_layers - 1:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> normed last-stage tokens ``(B, H/32, W/32, C)`` (NHWC, as timm's Swin)."""
        x = self.pos_drop(self.patch_embed(x))
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------- checkpoint filter

_TIMM_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def checkpoint_filter_fn(state_dict: dict[str, Any], model: SwinACmix) -> dict[str, Tensor]:
    """Bring a Swin / Swin-ACmix state dict into this model's (the authors') layout.

    * training dicts are unwrapped (``model`` / ``state_dict``), ``module.`` stripped;
    * ``relative_position_index`` and ``attn_mask`` buffers are dropped (rebuilt per input);
    * timm's Swin layout (``layers.i.downsample`` at the START of stage i, ``head.fc``)
      is mapped: ``layers.i.downsample`` -> ``layers.i-1.downsample``, ``head.fc`` -> ``head``;
    * missing ACmix extras (``attn.fc``, ``attn.dep_conv``, ``attn.rate1/2``: plain Swin
      weights) are filled with the model's own initial values, with a warning.
    """
    state_dict = unwrap_state_dict(state_dict)
    state_dict = {k: v for k, v in state_dict.items()
                  if not k.endswith(("relative_position_index", "attn_mask"))}
    timm_layout = "head.fc.weight" in state_dict or (
        "layers.0.downsample.reduction.weight" not in state_dict
        and any(_TIMM_DOWNSAMPLE.match(k) for k in state_dict))
    if timm_layout:
        def rename(k: str) -> str:
            m = _TIMM_DOWNSAMPLE.match(k)
            if m:
                return f"layers.{int(m.group(1)) - 1}.downsample." + k[m.end():]
            return "head." + k[len("head.fc."):] if k.startswith("head.fc.") else k

        state_dict = {rename(k): v for k, v in state_dict.items()}
    filled = fill_missing(state_dict, model, ACMIX_EXTRA_SUFFIXES)
    if filled:
        _logger.warning("checkpoint has no ACmix extras for %d tensors (plain Swin weights?): "
                        "they keep their initialisation (shift init, rates 0.5)", len(filled))
    return state_dict


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Write the model weights of a released checkpoint at ``src`` as a bare state dict at ``dst``.

    ``src`` may be a full training dict (``model``, ``optimizer``, a pickled yacs
    config): it is read with the allow-list of :func:`load_checkpoint_file`, never
    with an unrestricted unpickler.  ``dst`` ending in ``.safetensors`` is written as
    safetensors, anything else with ``torch.save``, atomically (an existing ``dst``
    stays as it was if the write fails).  Returns the keys written.
    """
    state_dict = unwrap_state_dict(load_checkpoint_file(src))
    if not state_dict:
        raise ValueError(f"no tensors found in checkpoint {os.fspath(src)!r}")
    save_weights(state_dict, dst, any_suffix=True)
    return list(state_dict)


# ----------------------------------------------------------------------------- builder

def _create_swin(variant: str, pretrained: bool = False, **kwargs: Any) -> SwinACmix:
    depths = kwargs.get("depths", (2, 2, 6, 2))
    check_model_kwargs(variant, kwargs, num_features=len(depths))
    out_indices = kwargs.pop("out_indices", tuple(range(len(depths))))
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained and overlay.get("file") and overlay.get("state_dict") is None:
        # timm reads files with weights_only=True, which refuses the authors' training dicts
        # (a pickled yacs config): read the file here, through the allow-list, and hand timm
        # the tensors; the filter, classifier and input-conv handling stay timm's.
        overlay["state_dict"] = unwrap_state_dict(load_checkpoint_file(overlay["file"]))
    model = build_model_with_cfg(
        SwinACmix, variant, pretrained,
        pretrained_cfg_overlay=overlay or None,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )
    for holder in (model, getattr(model, "model", None)):  # do not keep the weights alive in the cfg
        cfg = getattr(holder, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("state_dict") is not None:
            cfg["state_dict"] = None
    return with_input_check(model, variant)


# ----------------------------------------------------------------------------- default cfgs

def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "paper_ids": "arXiv:2111.14556", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "acmix_swin_tiny": _cfg(),
    "acmix_swin_small": _cfg(),
    "conv_swin_tiny": _cfg(),
})

# Published figures (docs/models.md: the authors' code gives 28.65 M / 50.35 M; MACs at 224x224).
# Conv-Swin-T has no published size: its target is this implementation's count (Tab. 6 design).
PAPER_FIGURES: dict[str, dict] = {
    "acmix_swin_tiny": dict(params_m=28.65, params_tol=0.02, macs_g=4.6, top1=81.9),
    "acmix_swin_small": dict(params_m=50.35, params_tol=0.02, macs_g=9.0, top1=83.5),
    "conv_swin_tiny": dict(params_m=26.47, params_tol=0.02, macs_g=None, top1=None),
}

_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7)


# ----------------------------------------------------------------------------- entry points

@register_model
def acmix_swin_tiny(pretrained: bool = False, **kwargs: Any) -> SwinACmix:
    """Swin-ACmix-T: Swin-T (96, [2, 2, 6, 2], heads [3, 6, 12, 24], window 7) with ACmix blocks."""
    return _create_swin("acmix_swin_tiny", pretrained, **{**_TINY, **kwargs})


@register_model
def acmix_swin_small(pretrained: bool = False, **kwargs: Any) -> SwinACmix:
    """Swin-ACmix-S: Swin-S (96, [2, 2, 18, 2]) with ACmix blocks."""
    return _create_swin("acmix_swin_small", pretrained, **{**_SMALL, **kwargs})


@register_model
def conv_swin_tiny(pretrained: bool = False, **kwargs: Any) -> SwinACmix:
    """Conv-Swin-T (paper Tab. 6): Swin-T with the window attention replaced by the convolution path."""
    return _create_swin("conv_swin_tiny", pretrained, **{**_TINY, "combination": "conv", **kwargs})

