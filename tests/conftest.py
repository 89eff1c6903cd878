"""Shared fixtures: tiny networks and data, so every test runs in a second or two."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset


class TinyBlock(nn.Module):
    """``relu(x + f(x))`` with BatchNorm: couples its input and output channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyNet(nn.Module):
    """Residual stages, a depthwise-separable pair and a flatten into a linear head, on 8x8."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = TinyBlock(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.block2 = TinyBlock(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 12, 1)
        self.fc1 = nn.Linear(12 * 4 * 4, 20)
        self.fc = nn.Linear(20, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        x = self.pw(self.dw(x))
        return self.fc(torch.relu(self.fc1(x.flatten(1))))


def make_tiny_net(seed: int = 0) -> TinyNet:
    """A TinyNet with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = TinyNet()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture
def tiny_net() -> TinyNet:
    return make_tiny_net()


@pytest.fixture
def tiny_data(tiny_net: TinyNet) -> dict[str, TensorDataset]:
    """Inputs labelled by the tiny teacher itself (so it is 100% accurate), 8x8 single channel."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(320, 1, 8, 8, generator=generator)
    with torch.no_grad():
        y = tiny_net(x).argmax(dim=1)
    return {
        "train": TensorDataset(x[:192], y[:192]),
        "val": TensorDataset(x[192:256], y[192:256]),
        "test": TensorDataset(x[256:], y[256:]),
    }


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Teachers trained by tests are cached per session, never in the user's home."""
    monkeypatch.setenv("PROTEGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run that collects no test is an error, never a silent success (pytest's exit 5)."""
    if not session.items and not session.config.getoption("collectonly"):
        raise pytest.UsageError("no tests were collected: check the paths and -k/-m filters")
