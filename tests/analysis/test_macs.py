import torch
import torch.nn.functional as F
from torch import nn

from acmix import ACmix
from acmix.analysis import count_macs


def test_acmix_macs_match_formula():
    """ACmix per pixel: 3C^2 (Stage I) + 206C (Stage II) at k_att 7, k_conv 3, 4 heads (docs/fast-paths.md)."""
    c, hw = 64, 14
    layer = ACmix(c, c)
    macs = count_macs(layer, (1, c, hw, hw))
    stage1 = 3 * c * c
    conv_p = 2 * (c // 4)  # the position grid's 1x1 conv, per pixel
    assert macs == (stage1 + 206 * c) * hw * hw + conv_p * hw * hw


def test_counts_a_plain_conv_and_adds_hooked_modules():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    assert count_macs(conv, (2, 8, 5, 5)) == 2 * 16 * 5 * 5 * 8 * 9
    net = nn.Sequential(nn.Conv2d(3, 8, 1), ACmix(8, 8, heads=2, stride=2))
    macs = count_macs(net, (1, 3, 9, 9))
    assert macs > count_macs(net[0], (1, 3, 9, 9)) + 2 * 49 * 8 * 25
    net.train()
    count_macs(net, (1, 3, 9, 9))
    assert net.training


def test_conv_only_has_no_uncounted_macs():
    layer = ACmix(8, 8, combination="conv")
    assert layer.uncounted_macs((torch.zeros(1, 8, 4, 4),), torch.zeros(1, 8, 4, 4)) == 0


def test_counts_scaled_dot_product_attention_on_every_device():
    """SDPA (Swin's and PVT's attention) counted as its two matmuls, whichever kernel the device would pick
    (the FLOP counter scores fused CPU kernels 0)."""

    class Attention(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, heads, L, E) as q, k and v
            return F.scaled_dot_product_attention(x, x, x)

    b, heads, length, dim = 2, 3, 16, 8
    assert count_macs(Attention(), (b, heads, length, dim)) == 2 * b * heads * length * length * dim
