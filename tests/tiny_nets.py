"""Tiny networks shared by the tests (a few channels, 8x8 input: each runs in milliseconds)."""

from __future__ import annotations

import torch
from torch import nn


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


FAST_DISTILL = {"epochs": 1, "finetune_epochs": 2, "batch_size": 64}
"""Distillation settings of the tests' whole studies: one-epoch trials, two-epoch fine-tunes."""


def tiny_config(data: dict, **overrides):  # type: ignore[no-untyped-def]
    """A search ``Config`` from ``data`` and ``overrides`` on the tests' fast defaults (any
    accuracy drop within half allowed, :data:`FAST_DISTILL`)."""
    from protege.search import Config  # not at import: the spaces tests load no Optuna

    return Config.from_dict({"constraints": {"max_accuracy_drop": 0.5},
                             "distill": FAST_DISTILL, **data, **overrides})


def open_tiny_study(data: dict, out, config, *, teacher: nn.Module | None = None):  # type: ignore[no-untyped-def]
    """``protege.create_study`` of ``teacher`` (default: :func:`make_tiny_net`) on the
    ``tiny_data`` fixture's splits, 8x8 single-channel inputs."""
    import protege

    return protege.create_study(teacher if teacher is not None else make_tiny_net(),
                                train=data["train"], val=data["val"], test=data["test"],
                                example_input=torch.randn(1, 1, 8, 8), config=config, out=out)


class HeadsAttention(nn.Module):
    """timm's attention: qkv reshaped to (3, heads, head_dim) with a fixed head count."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(
            2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


class BatchSizes(nn.Module):
    """``net`` that records the batch size of every training-mode call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.sizes.append(len(x))
        return self.net(x)
