"""The search space of students derived from a teacher, and how a student is built."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from protege.spaces._groups import ChannelGroup, PruneOp, find_channel_groups

__all__ = ["Architecture", "SearchSpace", "derive"]

logger = logging.getLogger(__name__)

Architecture = dict[str, Any]
"""A student: a plain JSON-able mapping from choice name to the chosen value."""

WIDTH_OPTIONS: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
"""Width multipliers offered per group of coupled channels, coarse enough to search."""

LEVELS = (1,)
"""Space levels available so far: 1 = width per coupled-channel group."""


class SearchSpace:
    """Students of one teacher: named choices, and a student built from an architecture.

    Build one with :func:`derive`. Choice names are stable and readable
    (``width.<root layer>``); an architecture maps each name to one of its options.
    """

    def __init__(
        self,
        teacher: nn.Module,
        example_input: torch.Tensor,
        groups: Sequence[ChannelGroup],
        *,
        level: int,
        width_options: Sequence[float] = WIDTH_OPTIONS,
    ) -> None:
        self._teacher = teacher
        self.example_input = example_input
        self.level = level
        self._groups = {f"width.{group.root}": group for group in groups}
        options = tuple(sorted(float(w) for w in width_options))
        if not options or options[0] <= 0 or options[-1] != 1.0:
            raise ValueError(f"width options must be in (0, 1] and include 1.0, got {options}")
        self.choices: dict[str, tuple[Any, ...]] = {name: options for name in self._groups}

    def __repr__(self) -> str:
        return f"SearchSpace(level={self.level}, choices={len(self.choices)}, size={self.size})"

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(len(options) for options in self.choices.values())

    @property
    def groups(self) -> dict[str, ChannelGroup]:
        """The coupled-channel group behind each width choice."""
        return dict(self._groups)

    def largest(self) -> Architecture:
        """The teacher's own architecture."""
        return {name: max(options) for name, options in self.choices.items()}

    def smallest(self) -> Architecture:
        """The smallest student the space offers."""
        return {name: min(options) for name, options in self.choices.items()}

    def sample(self, rng: np.random.Generator) -> Architecture:
        """A uniformly random architecture."""
        return {name: options[int(rng.integers(len(options)))]
                for name, options in self.choices.items()}

    def validate(self, arch: Mapping[str, Any]) -> Architecture:
        """Check that ``arch`` names every choice once with an offered value."""
        missing = sorted(set(self.choices) - set(arch))
        unknown = sorted(set(arch) - set(self.choices))
        if missing or unknown:
            raise ValueError(
                "architecture does not fit this space: "
                + "; ".join(part for part in (
                    f"missing choices {missing}" if missing else "",
                    f"unknown choices {unknown}" if unknown else "") if part)
            )
        for name, value in arch.items():
            if value not in self.choices[name]:
                raise ValueError(f"{name}={value!r} is not an option; options: "
                                 f"{list(self.choices[name])}")
        return {name: arch[name] for name in self.choices}

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        """A fixed-length float vector of the architecture, in choice order."""
        arch = self.validate(arch)
        return np.asarray([float(arch[name]) for name in self.choices], dtype=np.float32)

    def channels(self, arch: Mapping[str, Any]) -> dict[str, int]:
        """Channels each group keeps under ``arch``."""
        arch = self.validate(arch)
        return {name: _kept(group.channels, arch[name]) for name, group in self._groups.items()}

    def materialize(
        self,
        arch: Mapping[str, Any],
        *,
        init: Literal["inherit", "scratch"] = "inherit",
        seed: int = 0,
    ) -> nn.Module:
        """Build the student ``arch`` describes.

        Args:
            arch: One value per choice.
            init: ``"inherit"`` keeps the teacher's weights of the most important
                channels; ``"scratch"`` re-initialises every layer.
            seed: Seed of the scratch initialisation.

        Returns:
            A new module in eval mode; the teacher is not touched. The same
            (teacher, arch, init, seed) always gives the same student.
        """
        if init not in ("inherit", "scratch"):
            raise ValueError(f"init must be 'inherit' or 'scratch', got {init!r}")
        kept = self.channels(arch)
        student = copy.deepcopy(self._teacher)
        removals: dict[tuple[str, int, int, int], tuple[PruneOp, np.ndarray]] = {}
        for name, group in self._groups.items():
            if kept[name] == group.channels:
                continue
            removed = group.removed(kept[name])
            for op in group.ops:
                idxs = op.idxs[np.isin(op.roots, removed)]
                if op.key in removals:
                    idxs = np.union1d(removals[op.key][1], idxs)
                removals[op.key] = (op, idxs)
        for op, idxs in removals.values():
            _apply(student, op, sorted(int(i) for i in idxs))
        if init == "scratch":
            _reinitialise(student, seed)
        return student.eval()


def _kept(channels: int, multiplier: float) -> int:
    return max(1, min(channels, int(round(channels * multiplier))))


def _apply(model: nn.Module, op: PruneOp, idxs: list[int]) -> None:
    if not idxs:
        return
    handler_owner = getattr(op.handler, "__self__", None)
    if handler_owner is not None:
        handler_owner.pruning_dim = op.pruning_dim
    if not op.is_parameter:
        op.handler(model.get_submodule(op.target), idxs)
        return
    parent_name, _, attr = op.target.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, op.handler(getattr(parent, attr), idxs))


def _reinitialise(model: nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def derive(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    level: int = 1,
    ignored: Iterable[str] = (),
    width_options: Sequence[float] = WIDTH_OPTIONS,
) -> SearchSpace:
    """Derive the search space of students from the teacher's graph.

    The teacher is traced once. Level 1 offers one width multiplier per group of
    coupled channels; the classifier's outputs and the input's channels never
    change.

    Args:
        model: The trained teacher. It is not modified.
        example_input: A batch the teacher accepts (one sample is enough).
        level: Size of the space; see :data:`LEVELS`.
        ignored: Names of layers whose output channels must stay as they are.
        width_options: Multipliers offered per group (must include 1.0).

    Raises:
        ValueError: For an unknown level, a layer name that is not in the model,
            or a teacher whose graph yields no group that can be thinned.
    """
    if level not in LEVELS:
        raise ValueError(f"space level {level} is not available yet; available: {list(LEVELS)} "
                         "(depth and low-rank choices come with levels 2 and 3)")
    if not isinstance(model, nn.Module):
        raise TypeError(f"the teacher must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    ignored = list(ignored)
    for name in ignored:
        if name not in modules:
            raise ValueError(f"ignored layer {name!r} is not in the model")
    template = copy.deepcopy(model).eval()
    for param in template.parameters():
        param.requires_grad_(True)
    groups = find_channel_groups(
        template, example_input,
        ignored=[dict(template.named_modules())[n] for n in ignored],
    )
    if not groups:
        raise ValueError("found no group of channels that can be thinned in the teacher's graph")
    logger.info("derived %d width choices from %d layers", len(groups), len(modules))
    return SearchSpace(template, example_input, groups, level=level, width_options=width_options)
