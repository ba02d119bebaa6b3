"""Swin-ACmix and Conv-Swin: timm's Swin Transformer with ACmix blocks.

Paper: "On the Integration of Self-Attention and Convolution", Pan et al., CVPR 2022
(arXiv:2111.14556); Swin: Liu et al., ICCV 2021.

:class:`SwinACmix` is timm's ``SwinTransformer`` (its patch embedding, stages with
patch merging at their start, classifier head, and the timm interface) whose
blocks are :class:`SwinACmixBlock`: timm's ``SwinTransformerBlock`` with the
attention step overridden, because the convolution path needs the whole
(padded, shifted) map while timm partitions windows before ``attn``.  In
:class:`WindowAttentionACmix` the ``qkv`` linear runs on that map; the window
attention is Swin's up to ``proj``; the convolution path reads qkv as
``3 * heads`` pieces (:class:`acmix.nn.parts.ConvPathMixer`, ``fc`` with bias);
the block takes ``proj_drop(rate1 * att + rate2 * conv)`` and rolls back.

The state dict is timm's Swin layout plus the ACmix extras (``attn.fc``,
``attn.dep_conv``, ``attn.rate1/2``).  The authors' files (patch merging at the
end of a stage, a plain-linear ``head``) load through timm's Swin
``checkpoint_filter_fn``; plain Swin weights leave only the extras at their init.
Windows, padding and the shifted-window mask are computed per input, so the
model runs at any size: maps off the window grid are padded, *then* rolled,
which keeps the mask exact (timm rolls first; the two agree at 224x224 and on
every map that is a multiple of the window).  Why, and the export notes:
``docs/models.md`` (Swin-ACmix and Conv-Swin).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import PatchEmbed, calculate_drop_path_rates, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import swin_transformer as timm_swin
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch import Tensor, nn

from ..checkpoint_io import convert_checkpoint, load_checkpoint_file, unwrap_state_dict
from ..nn.parts import ConvPathMixer, FactoryKwargs
from ..ops import Combination, ShiftMode
from ..ops.common import packed
from ..ops.config import check_positive
from ._builder import fill_missing, no_weight_decay_names
from ._checks import POOLS, check_global_pool, check_model_kwargs, classifier_args, with_input_check
from ._swin_windows import axis_window, pad_roll, relative_position_index, shifted_window_mask, unroll_crop

__all__ = [
    "PAPER_FIGURES",
    "SwinACmix",
    "SwinACmixBlock",
    "WindowAttentionACmix",
    "checkpoint_filter_fn",
    "convert_checkpoint",
]

_logger = logging.getLogger(__name__)

# timm SwinTransformer arguments this model fixes, and why
_FIXED = {"head_dim": "dim // num_heads", "always_partition": "windows are chosen per input",
          "strict_img_size": "any input size runs", "dynamic_img_size": "any input size runs",
          "embed_layer": "timm's PatchEmbed, padding to the patch",
          "weight_init": "timm's default, then the shift init"}
ACMIX_EXTRA_SUFFIXES = ("attn.fc.weight", "attn.fc.bias", "attn.dep_conv.weight", "attn.rate1", "attn.rate2")


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
        # a pair, as timm's WindowAttention (its checkpoint filter reads one)
        self.dim, self.num_heads, self.window_size = dim, num_heads, (window_size, window_size)
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
        index = relative_position_index(wh, ww, self.window_size[0], device=qkv.device)
        bias = self.relative_position_bias_table[index.view(n * n)].view(n, n, heads).permute(2, 0, 1).to(qkv.dtype)
        # 4-D SDPA inputs (ONNX takes no 5-D): windows in the batch when every window shares the bias;
        # with a per-window mask, windows x heads as the "heads" axis, broadcast over the batch
        if mask is None:
            q, k, v = packed(win).view(3, b * nh * nw, heads, n, hd).unbind(0)
            bias = bias.unsqueeze(0)  # (1, heads, N, N)
        else:
            q, k, v = packed(win).view(3, b, nh * nw * heads, n, hd).unbind(0)
            bias = packed(bias.unsqueeze(0) + mask.to(qkv.dtype).unsqueeze(1)).view(1, nh * nw * heads, n, n)
        # the bias expanded to q's batch (a stride-0 view): broadcasting it would guard on that batch being 1
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(q.shape[0], -1, -1, -1),
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        out = packed(out.view(b * nh * nw, heads, n, hd).transpose(1, 2)).view(b * nh * nw, n, self.dim)
        out = self.proj(out).view(b, nh, nw, wh, ww, self.dim)  # heads concatenated, projected per window
        return packed(out.permute(0, 1, 3, 2, 4, 5)).view(b, h, w, self.dim)

    def forward(self, x: Tensor, window: tuple[int, int] | None = None, mask: Tensor | None = None) -> Tensor:
        wh, ww = window if window is not None else self.window_size
        qkv = self.qkv(x)
        att = self._attention(qkv, wh, ww, mask) if self.has_attention else None
        conv = None
        if self.has_conv:
            b, h, w, _ = qkv.shape
            pieces = qkv.view(b, h, w, 3 * self.num_heads, self.head_dim).permute(0, 3, 4, 1, 2)
            conv = self.shift_conv(pieces).permute(0, 2, 3, 1)
        return self.proj_drop(self.combine(att, conv))

    def uncounted_macs(self, inputs: tuple, output: Tensor) -> int:
        """0: the window attention is SDPA, whose matmuls ``count_macs`` counts (on SDPA's math path)."""
        return 0

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, num_heads={self.num_heads}, window_size={self.window_size[0]}, "
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
        # input_resolution: unused (the window is chosen per input), given as one window
        super().__init__(dim, (window_size, window_size), num_heads=num_heads, head_dim=1, window_size=window_size,
                         shift_size=shift_size, always_partition=True, dynamic_mask=True, mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, proj_drop=drop, attn_drop=attn_drop, drop_path=drop_path,
                         act_layer=act_layer, norm_layer=norm_layer, device=device, dtype=dtype)
        # replaces timm's `attn` (not a subclass of timm's WindowAttention, so add_module rather than `=`)
        self.add_module("attn", WindowAttentionACmix(dim, num_heads, window_size, qkv_bias=qkv_bias,
                                                     attn_drop=attn_drop, proj_drop=drop, combination=combination,
                                                     shift=shift, device=device, dtype=dtype))

    def set_input_size(self, feat_size: tuple[int, int], window_size: Any,
                       always_partition: bool | None = None) -> None:
        """Nothing to set for a new size (``input_resolution`` is unused); another window is refused."""
        if tuple(to_2tuple(window_size)) != tuple(self.window_size):
            raise ValueError(f"window_size={window_size!r}: Swin-ACmix keeps the window it was built with "
                             f"({self.window_size[0]}); build the model with window_size= instead")

    def forward(self, x: Tensor) -> Tensor:
        """timm's block step on the ``(B, H, W, C)`` map as it is: its ``reshape(B, -1, C)`` for the MLP
        cannot size an empty batch, and the norm and MLP act on the last axis alone."""
        x = x + self.drop_path1(self._attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def _attn(self, x: Tensor) -> Tensor:
        # every size below may be symbolic (export, dynamic compile): no branch on it, no int taken from it
        _, h, w, _ = x.shape
        wh, sh = axis_window(h, self.window_size[0], self.shift_size[0])
        ww, sw = axis_window(w, self.window_size[1], self.shift_size[1])
        hp, wp = (h + wh - 1) // wh * wh, (w + ww - 1) // ww * ww
        # pad, then roll (the mask is exact for the padded map), as gathers: no slice bound to guard on
        x = pad_roll(pad_roll(x, 1, h, hp, sh), 2, w, wp, sw)
        mask = None
        if self.shift_size[0] or self.shift_size[1]:  # the block's configuration; sh, sw may still be 0
            mask = shifted_window_mask(hp, wp, wh, ww, sh, sw, device=x.device, dtype=x.dtype)
        x = self.attn(x, (wh, ww), mask)
        return unroll_crop(unroll_crop(x, 1, h, hp, sh), 2, w, wp, sw)


# ----------------------------------------------------------------------------- model

class SwinACmix(SwinTransformer):
    """timm's Swin Transformer with :class:`SwinACmixBlock` blocks; runs at any input size.

    Args (besides timm's ``SwinTransformer`` ones: ``in_chans``, ``num_classes``, ``global_pool``,
    ``drop_rate``, ``embed_dim``, ``patch_size``, ``img_size``; the others it fixes are refused):
        combination: ``"learned"`` (Swin-ACmix), ``"fixed"``, ``"attention"`` (plain Swin)
            or ``"conv"`` (Conv-Swin).  shift: the convolution path's shift
            (``"grouped"``, ``"learnable"``, ``"fixed"``, ``"tensor"``).
        depths, num_heads, window_size (one int for all stages), qkv_bias,
        proj_drop_rate, attn_drop_rate, drop_path_rate (linear over the blocks, as Swin).

    timm builds the stages without blocks (``depths`` of zeros: its stage would build
    its own block type) and the ACmix blocks are added here, then timm's init runs
    on the whole model (``reset_parameters`` restores the shift init and the rates).
    """

    def __init__(self, *, depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window_size: int = 7, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 combination: Combination | str = Combination.LEARNED, shift: ShiftMode | str = ShiftMode.GROUPED,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: type[nn.Module] = nn.LayerNorm, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, global_pool: str = "avg", **kwargs: Any) -> None:
        if len(depths) != len(num_heads):
            raise ValueError(f"depths={depths!r} and num_heads={num_heads!r} differ in length")
        fixed = sorted(set(kwargs) & set(_FIXED))
        if fixed:
            raise ValueError(f"{fixed[0]}={kwargs[fixed[0]]!r}: Swin-ACmix sets it itself ({_FIXED[fixed[0]]})")
        check_positive(window_size, "window_size")
        embed_layer: Any = partial(PatchEmbed, dynamic_img_pad=True)  # inputs off the patch grid are padded
        super().__init__(depths=(0,) * len(depths), num_heads=num_heads, window_size=window_size,
                         global_pool=check_global_pool(global_pool, POOLS), mlp_ratio=mlp_ratio,
                         strict_img_size=False, norm_layer=norm_layer, embed_layer=embed_layer,
                         weight_init="skip", device=device, dtype=dtype, **kwargs)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        for stage, info, depth, heads, rates in zip(self.layers, self.feature_info, depths, num_heads, dpr):
            stage.depth = depth  # type: ignore[assignment]  # torch types Module attributes as Tensor | Module
            stage.blocks = nn.Sequential(*[
                SwinACmixBlock(info["num_chs"], heads, window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                               mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=proj_drop_rate,
                               attn_drop=attn_drop_rate, drop_path=rates[i], norm_layer=norm_layer,  # type: ignore[index]
                               combination=combination, shift=shift, device=device, dtype=dtype)
                for i in range(depth)])
        self.weight_init_mode = ""
        self.init_weights(needs_reset=True)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self, ("relative_position_bias_table",))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(*classifier_args(self, num_classes, global_pool, POOLS))

    def set_input_size(self, img_size: tuple[int, int] | None = None, patch_size: Any = None,
                       window_size: Any = None, window_ratio: Any = None, always_partition: bool | None = None) -> None:
        """Only the nominal ``img_size`` changes: windows, padding and masks are computed for every input."""
        for name, value in (("patch_size", patch_size), ("window_size", window_size), ("window_ratio", window_ratio)):
            if value is not None:
                raise ValueError(f"{name}={value!r}: Swin-ACmix keeps the {name.replace('_', ' ')} it was built with")
        if img_size is not None:
            self.patch_embed.set_input_size(img_size=img_size)  # type: ignore[operator]  # Module attribute typing


# ----------------------------------------------------------------------------- checkpoints

def checkpoint_filter_fn(state_dict: dict[str, Any], model: SwinACmix) -> dict[str, Tensor]:
    """A Swin / Swin-ACmix state dict (the authors' or timm's layout) in this model's layout.

    Training dicts are unwrapped and ``module.`` stripped; timm's Swin filter maps the
    authors' layout (merging at the end of a stage, ``head``) onto timm's, drops the
    ``relative_position_index`` / ``attn_mask`` buffers and resizes position tables
    for another window; missing ACmix extras (plain Swin weights) keep the model's
    initial values, with a warning.
    """
    state_dict = unwrap_state_dict(state_dict)
    if not any(isinstance(m, WindowAttentionACmix) and m.has_attention for m in model.modules()):
        tables = [k for k in state_dict if k.endswith("relative_position_bias_table")]
        if tables:
            raise ValueError(f"the checkpoint has window-attention weights ({tables[0]}), which a "
                             "convolution-only model (combination='conv') has no place for")
    state_dict = timm_swin.checkpoint_filter_fn(state_dict, model)
    filled = fill_missing(state_dict, model, ACMIX_EXTRA_SUFFIXES)
    if filled:
        _logger.warning("checkpoint has no ACmix extras for %d tensors (plain Swin weights?): "
                        "they keep their initialisation (shift init, rates 0.5)", len(filled))
    return state_dict


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
        "first_conv": "patch_embed.proj", "classifier": "head.fc",
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

