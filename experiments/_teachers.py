"""Teacher networks for the offline benchmark tasks: architectures, training, disk cache.

Each task has one teacher architecture (:func:`build_teacher`) and one training recipe
(:data:`RECIPES`). :func:`load_or_train_teacher` trains a teacher once per (task, seed,
version) and keeps its weights under ``<cache_dir>/teachers/``; later calls load them.

The cache version combines :data:`TEACHER_CODE_VERSION` (bumped by hand when the
training code changes in a way the hash cannot see) with a short hash of the
architecture's ``repr`` and the recipe, so editing either invalidates old files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from protege.common import atomic_write
from protege.distill import batch_starts, evaluate

__all__ = [
    "RECIPES",
    "TEACHER_CODE_VERSION",
    "TeacherRecipe",
    "build_teacher",
    "load_or_train_teacher",
    "teacher_cache_path",
    "teacher_version",
    "train_teacher",
]

logger = logging.getLogger(__name__)
progress_logger = logging.getLogger("protege.progress")

TEACHER_CODE_VERSION = 1
"""Bump by hand when the training code changes in a way the version hash cannot see."""


# --------------------------------------------------------------------------- architectures


class ResidualBlock2d(nn.Module):
    """A residual block whose output is exactly ``x + f(x)``.

    ``f`` is conv-BN-ReLU-conv-BN with equal input and output channels, so dropping
    ``f`` leaves the identity.

    Args:
        channels: Number of input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResidualBlock1d(nn.Module):
    """A 1-D residual block whose output is exactly ``x + f(x)``.

    Args:
        channels: Number of input and output channels.
        kernel_size: Odd kernel size of both convolutions.
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv1d(channels, channels, kernel_size, padding=pad, bias=False),
            nn.BatchNorm1d(channels),
            nn.ReLU(inplace=True),
            nn.Conv1d(channels, channels, kernel_size, padding=pad, bias=False),
            nn.BatchNorm1d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(f(x) + shortcut(x))``.

    The shortcut is the identity, or a strided 1x1 convolution with BatchNorm when the
    stride or the channel count changes.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        stride: Stride of the first convolution (and of the projection shortcut).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _conv_bn_relu_2d(cin: int, cout: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _conv_bn_relu_1d(cin: int, cout: int, kernel_size: int, *, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(cin, cout, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm1d(cout),
        nn.ReLU(inplace=True),
    )


class DigitsCNN(nn.Module):
    """Small CNN for 8x8 digits: stem, one residual block, a strided conv, linear head.

    Args:
        num_classes: Number of output classes.
        width: Channels of the stem and the residual block (doubled after the stride).
    """

    def __init__(self, num_classes: int = 10, *, width: int = 32) -> None:
        super().__init__()
        self.stem = _conv_bn_relu_2d(1, width)
        self.block = ResidualBlock2d(width)
        self.down = _conv_bn_relu_2d(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.block(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


class MNIST1DResNet(nn.Module):
    """1-D residual CNN for MNIST-1D: two stages of ``x + f(x)`` blocks, GAP, linear head.

    Args:
        num_classes: Number of output classes.
        widths: Channels of the two stages; the second stage runs at half the length.
        blocks: Residual blocks per stage.
        kernel_size: Kernel size of every convolution but the stem's.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        widths: tuple[int, int] = (32, 64),
        blocks: int = 2,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        w1, w2 = widths
        self.stem = _conv_bn_relu_1d(1, w1, 5)
        self.layer1 = nn.Sequential(*(ResidualBlock1d(w1, kernel_size) for _ in range(blocks)))
        self.down = _conv_bn_relu_1d(w1, w2, kernel_size, stride=2)
        self.layer2 = nn.Sequential(*(ResidualBlock1d(w2, kernel_size) for _ in range(blocks)))
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        x = self.act(self.layer2(self.down(x)))
        return self.fc(self.flatten(self.pool(x)))


class FashionResNet(nn.Module):
    """Small ResNet for 28x28 images: stem, three stages of :class:`BasicBlock`, GAP, linear.

    Args:
        num_classes: Number of output classes.
        widths: Channels of the three stages; stages two and three downsample by 2.
        blocks: Basic blocks per stage.
    """

    def __init__(
        self,
        num_classes: int = 10,
        *,
        widths: tuple[int, int, int] = (16, 32, 64),
        blocks: int = 1,
    ) -> None:
        super().__init__()
        self.stem = _conv_bn_relu_2d(1, widths[0])
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            layers = [BasicBlock(cin, cout, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "digits": lambda: DigitsCNN(10, width=24),
    "mnist1d": lambda: MNIST1DResNet(10, widths=(32, 64), blocks=2, kernel_size=3),
    "fashion_mnist": lambda: FashionResNet(10, widths=(16, 32, 64), blocks=1),
}


def _check_name(name: str) -> None:
    if name not in _BUILDERS:
        known = ", ".join(sorted(_BUILDERS))
        raise ValueError(f"unknown task {name!r}; known tasks: {known}")


def build_teacher(name: str) -> nn.Module:
    """Build the untrained teacher architecture of a task.

    Weights are initialised from torch's global random generator.

    Args:
        name: Task name, e.g. ``"digits"``.

    Returns:
        A freshly initialised module, in training mode.

    Raises:
        ValueError: If ``name`` is not a known task.
    """
    _check_name(name)
    return _BUILDERS[name]()


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TeacherRecipe:
    """Hyper-parameters of a teacher's training run (AdamW with a one-cycle schedule).

    Attributes:
        epochs: Passes over the training split.
        batch_size: Training batch size.
        lr: Peak learning rate of the one-cycle schedule.
        weight_decay: AdamW weight decay.
        label_smoothing: Cross-entropy label smoothing.
        pct_start: Fraction of the steps spent warming up.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    pct_start: float = 0.25

    def as_dict(self) -> dict[str, Any]:
        """Return the recipe as a plain dict."""
        return dataclasses.asdict(self)


RECIPES: dict[str, TeacherRecipe] = {
    "digits": TeacherRecipe(epochs=20, batch_size=64, lr=1e-2),
    "mnist1d": TeacherRecipe(epochs=40, batch_size=128, lr=1e-2),
    "fashion_mnist": TeacherRecipe(epochs=5, batch_size=256, lr=1e-2),
}


def train_teacher(
    name: str,
    train: TensorDataset,
    val: TensorDataset,
    *,
    seed: int,
    recipe: TeacherRecipe | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a task's teacher from scratch on the CPU, deterministically for a given seed.

    The global torch random state is restored afterwards.

    Args:
        name: Task name.
        train: Training split.
        val: Validation split, evaluated after every epoch.
        seed: Seed of the initialisation and the shuffling.
        recipe: Hyper-parameters; defaults to ``RECIPES[name]``.

    Returns:
        The trained model in eval mode and a dict with ``val_accuracy``, ``epochs`` and
        ``train_seconds``.
    """
    _check_name(name)
    recipe = recipe or RECIPES[name]
    x, y = train.tensors[0], train.tensors[1]
    n = len(y)
    steps_per_epoch = len(batch_starts(n, recipe.batch_size))
    start_time = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_teacher(name)
        shuffle = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=recipe.lr,
            epochs=recipe.epochs,
            steps_per_epoch=steps_per_epoch,
            pct_start=recipe.pct_start,
        )
        loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        val_accuracy = 0.0
        for epoch in range(recipe.epochs):
            model.train()
            order = torch.randperm(n, generator=shuffle)
            total_loss = 0.0
            for rows in batch_starts(n, recipe.batch_size):  # never a batch of one
                idx = order[rows.start : rows.stop]
                loss = loss_fn(model(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += float(loss.detach()) * len(idx)
            val_accuracy = evaluate(model, val)
            elapsed = time.perf_counter() - start_time
            progress_logger.info(
                "training teacher %s seed %d: epoch %d/%d, loss %.4f, val accuracy %.4f, "
                "%.0f s, ETA %.0f s", name, seed, epoch + 1, recipe.epochs, total_loss / n,
                val_accuracy, elapsed, elapsed / (epoch + 1) * (recipe.epochs - epoch - 1))
    model.eval()
    info = {
        "val_accuracy": val_accuracy,
        "epochs": recipe.epochs,
        "train_seconds": time.perf_counter() - start_time,
    }
    return model, info


# --------------------------------------------------------------------------- cache


def teacher_version(name: str) -> str:
    """Return the cache version of a task's teacher, e.g. ``"v1-3f2a9c1b"``.

    Args:
        name: Task name.

    Returns:
        :data:`TEACHER_CODE_VERSION` and a short hash of the architecture and recipe.
    """
    _check_name(name)
    with torch.random.fork_rng(devices=[]):
        arch = repr(build_teacher(name))
    payload = json.dumps({"arch": arch, "recipe": RECIPES[name].as_dict()}, sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:8]
    return f"v{TEACHER_CODE_VERSION}-{digest}"


def teacher_cache_path(name: str, *, seed: int, cache_dir: Path) -> Path:
    """Return ``<cache_dir>/teachers/<name>-seed<seed>-<version>.pt``."""
    return Path(cache_dir) / "teachers" / f"{name}-seed{seed}-{teacher_version(name)}.pt"


def _save_atomically(payload: dict[str, Any], path: Path) -> None:
    with atomic_write(path, binary=True) as handle:
        torch.save(payload, handle)


def _load_cached(name: str, path: Path) -> tuple[nn.Module, dict[str, Any]] | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        with torch.random.fork_rng(devices=[]):
            model = build_teacher(name)
        model.load_state_dict(payload["state_dict"])
        info = dict(payload["info"])
    except Exception as exc:  # a corrupt or stale file is retrained, not fatal
        logger.warning("ignoring unreadable teacher cache %s: %s", path, exc)
        return None
    model.eval()
    return model, info


def load_or_train_teacher(
    name: str,
    *,
    train: TensorDataset,
    val: TensorDataset,
    test: TensorDataset,
    seed: int,
    cache_dir: Path,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a task's teacher from the disk cache, or train it and cache it.

    Args:
        name: Task name.
        train: Training split.
        val: Validation split.
        test: Test split, evaluated once after training.
        seed: Training seed.
        cache_dir: Cache root; the file lives under ``cache_dir / "teachers"``.

    Returns:
        The teacher in eval mode and its info dict: ``val_accuracy``, ``test_accuracy``,
        ``epochs``, ``train_seconds``, ``num_params``, ``task``, ``seed``, ``version``,
        ``recipe``, ``torch_version``, ``cache_path`` and ``from_cache``.
    """
    path = teacher_cache_path(name, seed=seed, cache_dir=cache_dir)
    cached = _load_cached(name, path)
    if cached is not None:
        model, facts = cached
        logger.info("loaded teacher %s seed %d from %s", name, seed, path)
        facts.update(cache_path=str(path), from_cache=True)
        return model, facts

    logger.info("training teacher %s seed %d (cache miss: %s)", name, seed, path)
    model, trained = train_teacher(name, train, val, seed=seed)
    info: dict[str, Any] = {
        "task": name,
        "seed": seed,
        "version": teacher_version(name),
        "val_accuracy": float(trained["val_accuracy"]),
        "test_accuracy": float(evaluate(model, test)),
        "epochs": int(trained["epochs"]),
        "train_seconds": float(trained["train_seconds"]),
        "num_params": sum(p.numel() for p in model.parameters()),
        "recipe": RECIPES[name].as_dict(),
        "torch_version": str(torch.__version__),
    }
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _save_atomically({"state_dict": state, "info": info}, path)
    logger.info(
        "teacher %s seed %d: val_acc %.4f test_acc %.4f in %.1f s, cached at %s",
        name,
        seed,
        info["val_accuracy"],
        info["test_accuracy"],
        info["train_seconds"],
        path,
    )
    info.update(cache_path=str(path), from_cache=False)
    return model, info
