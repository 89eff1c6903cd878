"""Feature hints: which stage outputs to match, hooks that capture them, and adapters.

Students are built from the teacher by :mod:`protege.spaces`, so a module keeps its
name in the student; only its channel count (and, for other spaces, possibly its
presence) changes. The hint layers are found on the teacher alone: the output of
the last module before each change of spatial size (the end of each stage) and
before the head. A small learned 1x1 convolution per layer maps the student's
channels onto the teacher's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from protege.common import eval_mode

__all__ = ["HintAdapters", "capture", "match_spatial", "pool_features", "select_hint_layers"]

logger = logging.getLogger(__name__)


def _feature_outputs(model: nn.Module, example: torch.Tensor) -> list[tuple[str, torch.Size]]:
    """``(name, output shape)`` of every named module, in the order modules finish."""
    seen: list[tuple[str, torch.Size]] = []
    handles = []

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(module: nn.Module, args: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                seen.append((name, output.shape))
        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def select_hint_layers(
    model: nn.Module,
    example: torch.Tensor,
    *,
    max_layers: int = 3,
) -> tuple[str, ...]:
    """Names of the modules whose outputs end a stage, at most ``max_layers`` of them.

    Modules are visited in the order they finish. Outputs with spatial dimensions
    (``(batch, channels, *spatial)`` with more than one position) are grouped into
    runs of equal spatial size. From each run the shallowest module that finishes
    last is taken: the stage itself, not a layer inside the block that starts the
    next stage. When there are more stages than ``max_layers``, the deepest stages
    are kept (they matter most to the head).

    Args:
        model: The teacher (or any network of the same names).
        example: A batch it accepts.
        max_layers: How many stage outputs to keep at most.
    """
    runs: list[list[str]] = []
    last_spatial: torch.Size | None = None
    for name, shape in _feature_outputs(model, example):
        spatial = shape[2:]
        if len(shape) < 3 or int(torch.Size(spatial).numel()) <= 1:
            continue
        if runs and spatial == last_spatial:
            runs[-1].append(name)
        else:
            runs.append([name])
        last_spatial = spatial
    picks = []
    for run in runs:
        depth = min(name.count(".") for name in run)
        picks.append([name for name in run if name.count(".") == depth][-1])
    names = tuple(picks[-max_layers:]) if max_layers > 0 else ()
    logger.debug("hint layers: %s", ", ".join(names) or "none")
    return names


@contextlib.contextmanager
def capture(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Hooks that store the outputs of the named modules in the yielded dict, per forward.

    Raises:
        ValueError: If a name is not a module of ``model``.
    """
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise ValueError(f"hint layers {missing} are not modules of the "
                         f"{type(model).__name__}")
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def record(module: nn.Module, args: object, output: torch.Tensor,
                   name: str = name) -> None:
            store[name] = output
        handles.append(modules[name].register_forward_hook(record))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def pool_features(features: torch.Tensor, size: int | None) -> torch.Tensor:
    """Average-pool every spatial dimension to at most ``size`` (None: unchanged)."""
    if size is None:
        return features
    target = [min(int(d), size) for d in features.shape[2:]]
    return match_spatial(features, target)


def match_spatial(features: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Adaptive-average-pool ``features`` to the given spatial size when they differ."""
    if tuple(features.shape[2:]) == tuple(spatial):
        return features
    if features.dim() == 3:
        return F.adaptive_avg_pool1d(features, list(spatial))
    if features.dim() == 4:
        return F.adaptive_avg_pool2d(features, (spatial[0], spatial[1]))
    if features.dim() == 5:
        return F.adaptive_avg_pool3d(features, (spatial[0], spatial[1], spatial[2]))
    raise ValueError(f"cannot pool features of shape {tuple(features.shape)}")


_CONVS: dict[int, type[nn.Conv1d] | type[nn.Conv2d] | type[nn.Conv3d]] = {
    3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}


class HintAdapters(nn.Module):
    """One 1x1 convolution per hint layer, from the student's channels to the teacher's.

    Args:
        student_channels: Channels of each hint layer's output in the student.
        teacher_shapes: ``(channels, *spatial)`` of each hint target (pooled or not).
    """

    def __init__(self, *, student_channels: dict[str, int],
                 teacher_shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.names = tuple(teacher_shapes)
        self.spatial = {name: tuple(shape[1:]) for name, shape in teacher_shapes.items()}
        self.adapters = nn.ModuleList(
            _CONVS[len(shape) + 1](student_channels[name], shape[0], 1, bias=False)
            for name, shape in teacher_shapes.items()
        )

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The student's features pooled to the targets' size, then mapped by the adapters."""
        # Average pooling and a 1x1 convolution commute; pooling first is cheaper.
        return {name: adapter(match_spatial(features[name], self.spatial[name]))
                for name, adapter in zip(self.names, self.adapters, strict=True)}
