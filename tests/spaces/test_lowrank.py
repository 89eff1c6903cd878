"""Rank choices: large layers factorised from their truncated SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from space_nets import Net1d, randomised
from torch import nn

from protege.estimators import count_macs
from protege.spaces import derive, factorize

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layer, shape", [
    (nn.Conv2d(6, 10, 3, stride=2, padding=1), (2, 6, 9, 9)),
    (nn.Conv2d(6, 10, (3, 1), padding="same", dilation=2, bias=False), (2, 6, 9, 9)),
    (nn.Conv1d(4, 12, 5, padding=2), (2, 4, 40)),
    (nn.Linear(20, 7), (3, 20)),
])
def test_full_rank_reproduces_the_layer(layer, shape):
    x = torch.randn(*shape)
    weight = layer.weight
    full = min(weight.shape[0], weight[0].numel())
    pair = factorize(layer, full)
    torch.testing.assert_close(pair(x), layer(x), rtol=1e-5, atol=1e-5)
    assert pair[0].out_features if isinstance(layer, nn.Linear) else pair[0].out_channels == full


def test_truncation_keeps_the_largest_singular_values():
    layer = nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.arange(16.0, 0.0, -1.0)))
    pair = factorize(layer, 4)
    torch.testing.assert_close(pair[1].weight @ pair[0].weight,
                               torch.diag(torch.tensor([16.0, 15, 14, 13] + [0] * 12)))


def test_only_ranks_that_cut_macs_are_offered(tiny_net):
    space = derive(tiny_net, X[:1], level=3)
    ranks = {n: v for n, v in space.choices.items() if n.startswith("rank.")}
    # down: 16 outputs of 8 x 3 x 3 inputs; rank 12 costs 12 * (72 + 16) < 16 * 72 MACs.
    assert ranks["rank.down"] == ranks["rank.block2.conv1"] == (0.25, 0.5, 0.75, 1.0)
    assert "rank.fc" not in ranks and "rank.pw" not in ranks  # too small to pay
    teacher_macs, _ = count_macs(tiny_net, X)
    student = space.materialize(space.largest() | {"rank.block2.conv1": 0.25})
    assert isinstance(student.block2.conv1, nn.Sequential)
    assert student.block2.conv1[0].out_channels == 4
    assert count_macs(student, X)[0] < teacher_macs


def test_a_square_layer_pays_only_below_half_rank():
    teacher = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    space = derive(teacher, torch.randn(1, 64), level=3)
    # Rank r costs r * (64 + 64) MACs against 64 * 64: only r < 32 pays.
    assert space.choices["rank.0"] == (0.25, 1.0)


def test_rank_applies_to_the_width_cut_layer(tiny_net):
    space = derive(tiny_net, X[:1], level=3)
    arch = space.largest() | {"width.block2.conv1": 0.5, "rank.block2.conv1": 0.5}
    student = space.materialize(arch)
    first, second = student.block2.conv1
    assert (first.in_channels, first.out_channels, second.out_channels) == (16, 4, 8)


def test_rank_and_bounds_on_a_1d_teacher():
    teacher = randomised(Net1d())
    x = torch.randn(2, 1, 40)
    space = derive(teacher, x[:1], level=3)
    assert [n for n in space.choices if n.startswith("rank.")] == ["rank.fc1"]
    low, high = space.macs_bounds()
    assert high == count_macs(teacher, x)[0] and 0 < low < high
    for seed in range(3):
        macs, _ = count_macs(space.materialize(space.sample(np.random.default_rng(seed))), x)
        assert low <= macs <= high
