"""Tiny networks, one per kind of coupling or choice, and a check every space must pass."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from protege.spaces import SearchSpace


class Residual(nn.Module):
    """``x + f(x)``: the plain residual block, with no activation after the add."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def conv_bn(cin: int, cout: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ConcatNet(nn.Module):
    """Two branches concatenated (DenseNet, Inception)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 8)
        self.a = conv_bn(8, 8)
        self.b = nn.Sequential(nn.Conv2d(8, 12, 1), nn.ReLU())
        self.mix = conv_bn(28, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.mix(torch.cat([x, self.a(x), self.b(x)], dim=1))
        return self.head(x.mean((2, 3)))


class SENet(nn.Module):
    """Squeeze-and-excitation: a gate computed from the features multiplies them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 16)
        self.fc1 = nn.Conv2d(16, 8, 1)
        self.fc2 = nn.Conv2d(8, 16, 1)
        self.conv = conv_bn(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return self.head(self.conv(x * gate).mean((2, 3)))


class MixerNet(nn.Module):
    """Tokens with LayerNorm and residual MLPs (a transformer's channel mixing)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.blocks = nn.Sequential(*[
            Residual(nn.Sequential(nn.LayerNorm(32), nn.Linear(32, 64), nn.GELU(),
                                   nn.Linear(64, 32))) for _ in range(2)])
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))).mean(1))


class Net1d(nn.Module):
    """MNIST-1D style: 1-D convolutions with residual blocks, flattened into a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU())
        self.blocks = nn.Sequential(*[Residual(nn.Sequential(
            nn.Conv1d(16, 16, 3, padding=1, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
            nn.Conv1d(16, 16, 3, padding=1, bias=False), nn.BatchNorm1d(16)))
            for _ in range(2)])
        self.pool = nn.AvgPool1d(4)
        self.fc1 = nn.Linear(16 * 10, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.relu(self.fc1(x.flatten(1))))


class DepthwiseNet(nn.Module):
    """Inverted residuals with depthwise convolutions (MobileNetV2)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 8)
        self.stage = nn.Sequential(*[Residual(nn.Sequential(
            nn.Conv2d(8, 24, 1), nn.ReLU(), conv_bn(24, 24, groups=24),
            nn.Conv2d(24, 8, 1), nn.BatchNorm2d(8))) for _ in range(3)])
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


def randomised(net: nn.Module, seed: int = 0) -> nn.Module:
    """``net`` with random non-trivial normalisation statistics, in eval mode."""
    torch.manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return net.eval()


def check_space(space: SearchSpace, teacher: nn.Module, x: torch.Tensor, *, samples: int = 4
                ) -> None:
    """Full size is the teacher; random students run, are deterministic and within bounds."""
    with torch.no_grad():
        expected = teacher(x)
        torch.testing.assert_close(space.materialize(space.largest())(x), expected)
        rng = np.random.default_rng(0)
        for arch in [space.smallest()] + [space.sample(rng) for _ in range(samples)]:
            a, b = space.materialize(arch), space.materialize(dict(arch))
            out = a(x)
            assert out.shape == expected.shape
            torch.testing.assert_close(out, b(x), rtol=0, atol=0)
            assert space.encode(arch).shape == (len(space.choices),)
