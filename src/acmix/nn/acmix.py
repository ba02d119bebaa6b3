"""``ACmix``: the module holds the parameters and delegates to :func:`acmix.ops.acmix`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.common import ACmixWeights
from ..ops.config import ACmixConfig, Combination, ShiftMode, as_enum
from ..ops.functional import Backend, acmix
from .parts import ConvPathMixer, FactoryKwargs

__all__ = ["ACmix"]


class ACmix(ConvPathMixer):
    """The ResNet-form ACmix layer of Pan et al., CVPR 2022 (``docs/operator.md``).

    Parameter names follow the authors' layer (``conv1``/``conv2``/``conv3`` for
    q/k/v, ``conv_p``, ``fc``, ``dep_conv``, ``rate1``, ``rate2``), so their state
    dicts load strictly into the default configuration.  Modules that a
    configuration does not use are absent, and so are their keys.

    Args:
        in_channels, out_channels: channel counts.
        kernel_att: odd attention window size.  heads: attention heads
            (``out_channels % heads == 0``).  kernel_conv: odd kernel of the
            convolution path.  stride: query subsampling; output is
            ``(H - 1) // stride + 1``.  dilation: of the attention window.
        position_encoding: the relative position term of the attention logits.
        conv_bias: give ``dep_conv`` a bias (the authors' checkpoints have none).
        combination: learned rates (default), fixed rates, attention only or
            convolution only (Tab. 6).  rates: initial (or fixed) ``(rate1, rate2)``.
        shift: the convolution path's shift implementation (Tab. 7).
        backend: force an implementation (default: the dispatcher chooses).
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_att: int = 7, heads: int = 4,
                 kernel_conv: int = 3, stride: int = 1, dilation: int = 1,
                 position_encoding: bool = True, conv_bias: bool = False,
                 combination: Combination | str = Combination.LEARNED,
                 rates: tuple[float, float] = (0.5, 0.5),
                 shift: ShiftMode | str = ShiftMode.GROUPED,
                 backend: Backend | str | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(f"device={device!r} is not a torch device") from None
            if device.type == "cuda" and not torch.cuda.is_available():  # else torch's driver message, deep down
                raise ValueError(f"device={str(device)!r}: CUDA is not available on this machine")
        cfg = ACmixConfig(in_channels, out_channels, heads=heads, kernel_att=kernel_att,
                          kernel_conv=kernel_conv, stride=stride, dilation=dilation,
                          position_encoding=position_encoding,
                          combination=as_enum(Combination, combination, "combination"),
                          shift=as_enum(ShiftMode, shift, "shift"))
        self.config = cfg
        self.backend = backend
        dd: FactoryKwargs = {"device": device, "dtype": dtype}
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1, **dd)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1, **dd)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1, **dd)
        if cfg.has_attention and position_encoding:
            self.conv_p = nn.Conv2d(2, cfg.head_dim, 1, **dd)
        self._init_conv_path(pieces=3 * heads, head_dim=cfg.head_dim, out_channels=out_channels,
                             kernel_conv=kernel_conv, stride=stride, combination=cfg.combination, shift=cfg.shift,
                             rates=rates, conv_bias=conv_bias, **dd)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Default init of the 1x1 convs, shift init of the convolution path, rates."""
        for name in ("conv1", "conv2", "conv3", "conv_p"):
            if hasattr(self, name):
                getattr(self, name).reset_parameters()
        self.reset_conv_path()

    def weights(self) -> ACmixWeights:
        """The layer's tensors in the functional op's layout."""
        conv_p = getattr(self, "conv_p", None)
        fc = getattr(self, "fc", None)
        return ACmixWeights(
            self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias,
            self.conv3.weight, self.conv3.bias,
            pe_weight=None if conv_p is None else conv_p.weight,
            pe_bias=None if conv_p is None else conv_p.bias,
            fc_weight=None if fc is None else fc.weight,
            conv_weight=self.conv_weight, conv_bias=self.conv_bias,
            rate_att=getattr(self, "rate1", None), rate_conv=getattr(self, "rate2", None))

    def forward(self, x: Tensor) -> Tensor:
        return acmix(x, self.weights(), self.config, backend=self.backend)

    def uncounted_macs(self, inputs: tuple[Tensor, ...], output: Tensor) -> int:
        """MACs that FLOP counters miss: the window logits and the weighted sum of values.

        Per output pixel and channel, ``kernel_att**2`` for ``q . k`` and as many for
        ``softmax . v`` (the position term adds 2 channels per head, not counted, as
        in the paper's tables).  See :func:`acmix.analysis.count_macs`.
        """
        if not self.config.has_attention:
            return 0
        b, c, h, w = output.shape
        return 2 * self.config.kernel_att**2 * b * c * h * w

    def extra_repr(self) -> str:
        c = self.config
        return (f"{c.in_channels}, {c.out_channels}, kernel_att={c.kernel_att}, heads={c.heads}, "
                f"kernel_conv={c.kernel_conv}, stride={c.stride}, dilation={c.dilation}, "
                f"position_encoding={c.position_encoding}, combination={c.combination.value}, "
                f"shift={c.shift.value}")
