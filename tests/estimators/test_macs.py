from __future__ import annotations

import pytest
import torch
from torch import nn

from protege.estimators import count_macs, count_macs_torch


@pytest.mark.parametrize(
    "net, shape, expected",
    [
        (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)), (1, 3, 8, 8), 3 * 8 * 9 * 64 + 0),
        (nn.Sequential(nn.Conv1d(1, 4, 5, padding=2), nn.Flatten(), nn.Linear(160, 10)),
         (2, 1, 40), 4 * 5 * 40 + 160 * 10),
        (nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4)), (1, 4, 8, 8), 4 * 9 * 64),
    ],
)
def test_thop_and_torch_counter_agree_on_convolutions_and_linear_layers(net, shape, expected):
    x = torch.randn(*shape)
    macs, params = count_macs(net, x)
    assert macs == count_macs_torch(net, x) == expected
    assert params == sum(p.numel() for p in net.parameters())


def test_count_is_per_sample_and_leaves_the_model_untouched(tiny_net):
    before = set(dict(tiny_net.named_buffers()))
    one = count_macs(tiny_net, torch.randn(1, 1, 8, 8))
    many = count_macs(tiny_net, torch.randn(16, 1, 8, 8))
    assert one == many
    assert set(dict(tiny_net.named_buffers())) == before  # no thop buffers left behind
    assert not tiny_net.training


def test_thop_counts_at_least_the_matmuls(tiny_net):
    x = torch.randn(1, 1, 8, 8)
    assert count_macs(tiny_net, x)[0] >= count_macs_torch(tiny_net, x)


class _FunctionalLinear(nn.Module):
    """A leaf thop has no rule for: its matmul must still be counted."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


@pytest.mark.parametrize(
    "net, shape, elementwise",
    [
        # conv/linear kinds (incl. depthwise and the low-rank pairs): exact agreement
        (nn.Conv1d(2, 4, 3, padding=1), (1, 2, 10), 0),
        (nn.Conv1d(4, 4, 3, padding=1, groups=4), (1, 4, 10), 0),
        (nn.Sequential(nn.Conv2d(3, 2, 3, padding=1, bias=False), nn.Conv2d(2, 5, 1)),
         (1, 3, 6, 6), 0),
        (nn.Sequential(nn.Linear(8, 2, bias=False), nn.Linear(2, 7)), (1, 8), 0),
        # zero-MAC modules protege gives rules to (thop would warn and count zero)
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.SiLU(), nn.Hardswish(), nn.GELU(),
                       nn.Identity(), nn.Dropout2d(), nn.Flatten()), (1, 2, 6, 6), 0),
        (_FunctionalLinear(), (1, 5), 0),
        # thop adds 4 per element for affine BatchNorm, kernel+1 per output for average pools
        (nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4)), (1, 2, 10), 4 * 40),
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)), (1, 2, 6, 6), 4 * 144),
        (nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.AdaptiveAvgPool1d(1)), (1, 2, 10),
         4 * (10 + 1)),
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1)), (1, 2, 6, 6),
         4 * (36 + 1)),
    ],
)
def test_thop_and_torch_counter_agree_per_layer_kind(net, shape, elementwise):
    x = torch.randn(*shape)
    assert count_macs(net, x)[0] - count_macs_torch(net, x) == elementwise
    assert count_macs_torch(net, x) > 0
