"""The search space of students derived from a teacher, and how a student is built."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from protege.spaces._blocks import ResidualBlock, Shortcut
from protege.spaces._checks import clone
from protege.spaces._groups import ChannelGroup, PruneOp
from protege.spaces._lowrank import factorize, rank_of

__all__ = ["Architecture", "SearchSpace", "SpaceParts", "kept_channels"]

logger = logging.getLogger(__name__)

Architecture = dict[str, Any]
"""A student: a plain JSON-able mapping from choice name to the chosen value."""


@dataclasses.dataclass(frozen=True)
class SpaceParts:
    """What a space is made of, by choice name; :func:`derive` assembles it.

    Attributes:
        groups: Coupled-channel group behind each ``width.*`` choice.
        blocks: Residual block behind each ``depth.*`` choice.
        ranks: Layer behind each ``rank.*`` choice.
        stages: Depth choices of each stage that must keep one block.
    """

    groups: dict[str, ChannelGroup]
    blocks: dict[str, ResidualBlock]
    ranks: dict[str, str]
    stages: tuple[tuple[str, ...], ...]


class SearchSpace:
    """Students of one teacher: named choices, and a student built from an architecture.

    Build one with :func:`derive`. Choice names are stable and readable:
    ``width.<root layer>`` (a multiplier per group of coupled channels),
    ``depth.<block>`` (True keeps a residual block, False leaves its shortcut) and
    ``rank.<layer>`` (a rank ratio, 1.0 = the layer as it is). An architecture maps
    each name to one of its options.
    """

    def __init__(
        self,
        *,
        teacher: nn.Module,
        example_input: torch.Tensor,
        level: int,
        parts: SpaceParts,
        choices: Mapping[str, Sequence[Any]],
    ) -> None:
        self._teacher = teacher
        self.example_input = example_input
        self.level = level
        self._parts = parts
        self.choices: dict[str, tuple[Any, ...]] = {name: tuple(v) for name, v in choices.items()}
        self._bounds: tuple[int, int] | None = None
        self._aliases = _aliases(teacher)

    def __repr__(self) -> str:
        return f"SearchSpace(level={self.level}, choices={len(self.choices)}, size={self.size})"

    @property
    def size(self) -> int:
        """Number of distinct architectures (stage rules not subtracted)."""
        return math.prod(len(options) for options in self.choices.values())

    @property
    def teacher(self) -> nn.Module:
        """The network students are cut from (the space's own: do not modify it)."""
        return self._teacher

    def with_weights(self, model: nn.Module) -> SearchSpace:
        """The same space, its students cut from ``model``'s weights instead of the teacher's.

        ``model`` is a network of the teacher's architecture with other weights (a trained
        :class:`~protege.spaces.Supernet`'s ``net``); it is not copied or modified.

        Raises:
            ValueError: If ``model``'s tensors do not have the teacher's names and shapes.
        """
        mine = {k: tuple(v.shape) for k, v in self._teacher.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if mine != theirs:
            diff = sorted(set(mine.items()) ^ set(theirs.items()))[:3]
            raise ValueError(f"the model does not have the teacher's architecture: tensors "
                             f"differ in name or shape, e.g. {diff}")
        return SearchSpace(teacher=model, example_input=self.example_input, level=self.level,
                           parts=self._parts, choices=self.choices)

    @property
    def groups(self) -> dict[str, ChannelGroup]:
        """The coupled-channel group behind each width choice."""
        return dict(self._parts.groups)

    @property
    def blocks(self) -> dict[str, ResidualBlock]:
        """The residual block behind each depth choice."""
        return dict(self._parts.blocks)

    @property
    def ranks(self) -> dict[str, str]:
        """The layer (qualified module name in the teacher) behind each rank choice."""
        return dict(self._parts.ranks)

    @property
    def stages(self) -> tuple[tuple[str, ...], ...]:
        """Depth choices of each stage that must keep at least one block."""
        return self._parts.stages

    def kinds(self) -> dict[str, int]:
        """Number of choices of each kind (``width``, ``depth``, ``rank``)."""
        counts = {"width": 0, "depth": 0, "rank": 0}
        for name in self.choices:
            kind = name.partition(".")[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def largest(self) -> Architecture:
        """The teacher's own architecture (when the options include it)."""
        return {name: max(options) for name, options in self.choices.items()}

    def smallest(self) -> Architecture:
        """The smallest student: least of every option, the cheapest block of a stage kept."""
        return self._keep_one({name: min(options) for name, options in self.choices.items()})

    def sample(self, rng: np.random.Generator) -> Architecture:
        """A uniformly random architecture among those the stage rule allows."""
        arch = {name: options[int(rng.integers(len(options)))]
                for name, options in self.choices.items()}
        for stage in self._parts.stages:
            while not any(arch[name] for name in stage):
                for name in stage:
                    options = self.choices[name]
                    arch[name] = options[int(rng.integers(len(options)))]
        return arch

    def repair(self, arch: Mapping[str, Any]) -> Architecture:
        """The canonical form of ``arch``: the architecture :meth:`materialize` builds.

        A stage that drops every block keeps its cheapest one; a width or rank choice
        that only touches layers inside dropped blocks is set to its largest option
        (it changes nothing), so equal students have equal architectures.
        """
        return self._keep_one(self.validate(arch))

    def _keep_one(self, arch: Architecture) -> Architecture:
        arch = dict(arch)
        blocks = self._parts.blocks
        for stage in self._parts.stages:
            if not any(arch[name] for name in stage):
                keepable = [name for name in stage if True in self.choices[name]]
                arch[min(keepable, key=lambda name: blocks[name].params)] = True
        dropped = [block.name for name, block in blocks.items() if not arch[name]]
        if dropped:
            for name, group in self._parts.groups.items():
                if all(_inside(op.target, dropped, strict=True) for op in group.ops):
                    arch[name] = max(self.choices[name])
            for name, layer in self._parts.ranks.items():
                if _inside(layer, dropped, strict=True):
                    arch[name] = max(self.choices[name])
        return arch

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
            options = self.choices[name]
            # 1 == True in Python: a depth choice must get a bool, a width one a number.
            if value not in options or (name.startswith("depth.") != isinstance(value, bool)):
                raise ValueError(f"{name}={value!r} is not an option; options: {list(options)}")
        return {name: arch[name] for name in self.choices}

    def encode(self, arch: Mapping[str, Any]) -> np.ndarray:
        """A fixed-length float vector of the architecture, in choice order (bools as 0/1)."""
        arch = self.validate(arch)
        return np.asarray([float(arch[name]) for name in self.choices], dtype=np.float32)

    def channels(self, arch: Mapping[str, Any]) -> dict[str, int]:
        """Channels each group keeps under ``arch``."""
        arch = self.validate(arch)
        return {name: kept_channels(group.channels, arch[name])
                for name, group in self._parts.groups.items()}

    def macs_bounds(self) -> tuple[int, int]:
        """MACs per sample of the smallest and of the largest student (computed once)."""
        if self._bounds is None:
            from protege.estimators import count_macs

            low, _ = count_macs(self.materialize(self.smallest()), self.example_input)
            high, _ = count_macs(self.materialize(self.largest()), self.example_input)
            self._bounds = (low, high)
        return self._bounds

    def materialize(
        self,
        arch: Mapping[str, Any],
        *,
        init: Literal["inherit", "scratch"] = "inherit",
        seed: int = 0,
    ) -> nn.Module:
        """Build the student ``arch`` describes.

        Widths are cut first (the most important channels stay), then chosen layers
        are factorised from the SVD of their cut weights, then dropped blocks are
        replaced by their shortcut. Choices inside a dropped block have no effect.

        Args:
            arch: One value per choice.
            init: ``"inherit"`` keeps the teacher's weights of the most important
                channels and the truncated SVD factors; ``"scratch"`` re-initialises
                every layer.
            seed: Seed of the scratch initialisation.

        Returns:
            A new module in eval mode; the teacher is not touched. The same
            (teacher, arch, init, seed) always gives the same student.
        """
        if init not in ("inherit", "scratch"):
            raise ValueError(f"init must be 'inherit' or 'scratch', got {init!r}")
        arch = self.repair(arch)
        student = clone(self._teacher)
        self._cut_widths(student, arch)
        dropped = sorted(self._parts.blocks[name].name for name in self._parts.blocks
                         if not arch[name])
        for name, layer in self._parts.ranks.items():
            if arch[name] < 1.0 and not _inside(layer, dropped):
                module = student.get_submodule(layer)
                rank = rank_of(module, float(arch[name]))
                if rank is not None:
                    self._replace(student, layer, factorize(module, rank))
        for name, block in self._parts.blocks.items():
            if not arch[name] and not _inside(block.name, dropped, strict=True):
                self._replace(student, block.name, Shortcut(block.post))
        if init == "scratch":
            _reinitialise(student, seed)
        return student.eval()

    def _replace(self, student: nn.Module, name: str, new: nn.Module) -> None:
        """Put ``new`` at ``name`` and at every other name the same module has (a layer
        registered twice stays one layer, transformed once)."""
        for alias in self._aliases.get(name, (name,)):
            _replace(student, alias, new)

    def _cut_widths(self, student: nn.Module, arch: Architecture) -> None:
        removals: dict[tuple[str, int, int, int], tuple[PruneOp, np.ndarray]] = {}
        for name, group in self._parts.groups.items():
            keep = kept_channels(group.channels, arch[name])
            if keep == group.channels:
                continue
            removed = group.removed(keep)
            for op in group.ops:
                idxs = op.idxs[np.isin(op.roots, removed)]
                if op.key in removals:
                    idxs = np.union1d(removals[op.key][1], idxs)
                removals[op.key] = (op, idxs)
        for op, idxs in removals.values():
            _apply(student, op, sorted(int(i) for i in idxs))

    def without(self, names: Sequence[str]) -> SearchSpace:
        """The same space with the named choices frozen at the teacher's value."""
        gone = set(names)
        parts = SpaceParts(
            groups={k: v for k, v in self._parts.groups.items() if k not in gone},
            blocks={k: v for k, v in self._parts.blocks.items() if k not in gone},
            ranks={k: v for k, v in self._parts.ranks.items() if k not in gone},
            stages=tuple(kept for kept in (tuple(n for n in stage if n not in gone)
                                           for stage in self._parts.stages) if kept),
        )
        return SearchSpace(teacher=self._teacher, example_input=self.example_input,
                           level=self.level, parts=parts,
                           choices={k: v for k, v in self.choices.items() if k not in gone})


def _aliases(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every name of each module registered under more than one name."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            names.setdefault(id(module), []).append(name)
    return {name: tuple(group) for group in names.values() if len(group) > 1
            for name in group}


def _inside(name: str, dropped: Sequence[str], *, strict: bool = False) -> bool:
    """Whether module ``name`` is (strictly) inside one of the ``dropped`` modules."""
    return any(name.startswith(d + ".") or (not strict and name == d) for d in dropped)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def kept_channels(channels: int, multiplier: float) -> int:
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
