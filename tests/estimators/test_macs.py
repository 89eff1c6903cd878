from __future__ import annotations

import pytest
import torch
from tiny_nets import HeadsAttention
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

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


# --- Module kinds thop gets wrong (issue 18, kind 1) -------------------------------------


@pytest.mark.parametrize(
    "layer, shape, expected",
    [
        # each input position does C_in x C_out/groups x k work (thop counted output positions)
        (nn.ConvTranspose2d(3, 1, 2, stride=2, bias=False), (1, 3, 2, 2), 4 * 3 * 1 * 4),
        (nn.ConvTranspose1d(2, 4, 3, stride=2, bias=False), (1, 2, 5), 5 * 2 * 4 * 3),
        (nn.ConvTranspose3d(2, 2, 2, stride=2, bias=False), (1, 2, 2, 2, 2), 8 * 2 * 2 * 8),
        (nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, groups=2, bias=False),
         (1, 4, 3, 3), 9 * 4 * 2 * 9),
        (nn.ConvTranspose2d(2, 2, 3, stride=1, dilation=2, bias=False), (1, 2, 4, 4),
         16 * 2 * 2 * 9),
    ],
)
def test_transposed_convolutions_count_input_positions(layer, shape, expected):
    x = torch.randn(*shape)
    assert count_macs(layer, x)[0] == count_macs_torch(layer, x) == expected


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Conv1d(2, 4, 3, stride=2, bias=False), (1, 2, 11)),
        (nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False), (1, 2, 9, 9)),
        (nn.Conv3d(2, 4, 3, stride=(1, 2, 2), bias=False), (1, 2, 5, 7, 7)),
        (nn.Conv2d(4, 4, 3, stride=2, dilation=2, groups=2, bias=False), (1, 4, 9, 9)),
        (nn.ConvTranspose1d(3, 2, 4, stride=3, output_padding=1, bias=False), (1, 3, 6)),
        (nn.ConvTranspose3d(2, 3, (1, 2, 3), stride=(1, 2, 2), bias=False), (1, 2, 2, 3, 3)),
    ],
)
def test_strided_layers_of_every_dimension_agree_with_torch(layer, shape):
    x = torch.randn(*shape)
    assert count_macs(layer, x)[0] == count_macs_torch(layer, x) > 0


def test_a_module_used_twice_counts_each_call_once():
    lin = nn.Linear(10, 10, bias=False)
    net = nn.Sequential(lin, nn.Sequential(lin))
    x = torch.randn(1, 10)
    assert count_macs(net, x)[0] == count_macs_torch(net, x) == 200


class _TwiceRegistered(nn.Module):
    """One conv registered under two names and called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1, bias=False)
        self.again = nn.ModuleList([self.conv])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.again[0](self.conv(x))


def test_a_conv_registered_twice_and_called_twice_counts_two_calls():
    net = _TwiceRegistered()
    x = torch.randn(1, 2, 4, 4)
    assert count_macs(net, x)[0] == count_macs_torch(net, x) == 2 * 2 * 2 * 9 * 16


@pytest.mark.parametrize("training", [True, False])
def test_multihead_attention_counts_projections_and_both_products(training):
    attn = nn.MultiheadAttention(32, 4, batch_first=True).train(training)
    x = torch.randn(1, 12, 32)

    class Self(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    expected = 4 * 12 * 32 * 32 + 2 * 12 * 12 * 32  # q, k, v, out projections; QK^T and AV
    assert count_macs(Self(), x)[0] == expected == 58_368
    # torch's counter sees the unfused path only (training mode, gradients on, weights)
    with FlopCounterMode(display=False) as counter:
        attn.train()(x, x, x)
    assert counter.get_total_flops() // 2 == expected


def test_functional_attention_products_outside_leaves_are_counted():
    x = torch.randn(1, 10, 16)
    expected = 10 * 16 * 48 + 10 * 16 * 16 + 2 * 10 * 10 * 16
    assert count_macs(HeadsAttention(), x)[0] == expected
    assert count_macs_torch(HeadsAttention(), x) == expected


def test_latency_trace_counts_transposed_convolutions_like_count_macs():
    from protege.estimators._trace import trace

    layer = nn.ConvTranspose2d(3, 2, 2, stride=2, bias=False)
    x = torch.randn(1, 3, 4, 4)
    assert trace(layer, x, keep_modules=False).calls[0].macs == count_macs(layer, x)[0] == 384
