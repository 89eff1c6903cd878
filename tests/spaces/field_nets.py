"""Small networks from public bug reports that derive used to get wrong (issue 18)."""

from __future__ import annotations

import torch
from tiny_nets import HeadsAttention
from torch import nn


class SharedLinear(nn.Module):
    """One ``nn.Linear`` held as ``shared`` and as ``again[0]``, called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 64)
        self.shared = nn.Linear(64, 64)
        self.again = nn.ModuleList([self.shared])
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        x = torch.relu(self.shared(x))
        return self.head(torch.relu(self.again[0](x)))


class BroadcastGate(nn.Module):
    """``x * sigmoid(gate(x))`` with a one-channel gate broadcast over 16 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.gate = nn.Conv2d(16, 1, 1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x * torch.sigmoid(self.gate(x))
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


class AuxHead(nn.Module):
    """Inception-style: an auxiliary head on the stem's features runs only in training.

    ``returns``: ``"hidden"`` keeps the auxiliary output in an attribute (the main
    output is a tensor in both modes); ``"tuple"`` returns ``(out, aux)`` in training.
    """

    def __init__(self, returns: str = "hidden") -> None:
        super().__init__()
        self.returns = returns
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16),
                                  nn.ReLU())
        self.aux = nn.Conv2d(16, 4, 1)
        self.head = nn.Linear(16, 4)
        self.aux_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        out = self.head(self.body(x).mean((2, 3)))
        if not self.training:
            return out
        aux = self.aux(x).mean((2, 3))
        if self.returns == "tuple":
            return out, aux
        self.aux_logits = aux.detach()
        return out


class FailsInTraining(nn.Module):
    """A teacher whose forward cannot run in training mode at all."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.odd = _EvalOnly()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.odd(torch.relu(self.stem(x))).mean((2, 3)))


class _EvalOnly(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("this layer is for inference only")
        return x


class GroupNormNet(nn.Module):
    """GroupNorm(4) after each conv: kept channels must stay divisible by 4."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        self.conv = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16),
                                  nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(self.stem(x)).mean((2, 3)))


class TinyViT(nn.Module):
    """Token embedding, one attention block and one MLP block, mean-pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = HeadsAttention()
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(x)
        x = x + self.mlp(x)
        return self.head(x.mean(1))


class CachedBias(nn.Module):
    """Caches a tensor computed from a parameter in eval mode (LeViT's attention biases):
    after a forward pass with gradients on, ``deepcopy`` refuses the model."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.bias = nn.Parameter(torch.zeros(16))
        self.cache: dict[str, torch.Tensor] = {}
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            bias = self.bias[:, None, None] * 2
        else:
            if "bias" not in self.cache:
                self.cache["bias"] = self.bias[:, None, None] * 2
            bias = self.cache["bias"]
        x = torch.relu(self.stem(x))
        return self.head(torch.relu(self.conv(x) + bias).mean((2, 3)))
