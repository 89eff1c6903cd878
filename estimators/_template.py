"""The kernel template of a space: a student's kernels and shapes by arithmetic.

From the teacher's kernel profile and one profile per one-choice probe (each width
choice at its smallest option; each structural choice at each option the teacher
does not take), :func:`build_template` records where every width choice changes a
dimension (a delta that scales with the channels it removes) and which kernels each
structural option removes or adds. :class:`Template` then lists the kernels of any
architecture and their shapes with no model built and no forward pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from protege.estimators._kernels import Kernel

__all__ = ["MISALIGNED", "Template", "build_template", "kept", "simd_block", "value_key"]


def kept(channels: int, multiplier: float) -> int:
    """Channels a width multiplier keeps (the rule of ``protege.spaces``)."""
    return max(1, min(channels, int(round(channels * multiplier))))


@dataclass(frozen=True)
class Node:
    """A kernel of the template: its place in the slot vector and when it runs."""

    name: str
    op: str
    lengths: tuple[int, ...]
    start: int
    choice: str | None = None
    value: str | None = None


MISALIGNED = '"misaligned"'


def simd_block() -> int:
    """Channels per SIMD block of ONNX Runtime's NCHWc kernels here (16 with AVX-512, else 8)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return 16 if "avx512f" in handle.read() else 8
    except OSError:
        return 8


def value_key(value: Any) -> str:
    return json.dumps(value)


class Template:
    """Kernel list and shapes of any architecture, by arithmetic on probed deltas.

    Every dimension of every kernel's shapes has one *slot* in a flat vector: node
    ``i``'s shapes are ``nodes[i].lengths`` consecutive runs of slots from
    ``nodes[i].start``. ``base`` holds the teacher's dimensions; a width choice
    subtracts from the slots it changes ``delta * cut / removed``, where ``cut`` is
    the channels its option removes and ``removed`` those of the probe that measured
    ``delta``.

    Attributes:
        nodes: Every kernel any student can run: the teacher's first, then those a
            structural option or an off-block channel count adds.
        base: The teacher's slot vector (int64).
        width: Width choice -> (slots it changes, their deltas at the probe, the
            group's channels, channels the probe removed).
        removed: (structural choice, option as JSON) -> teacher nodes it removes.
        added: (choice, option as JSON or :data:`MISALIGNED`) -> nodes it adds.
        initial: Per node, whether the teacher runs it.
        block: The runtime's SIMD channel block (:func:`simd_block`).
        misaligned: Width choice -> reorder nodes that run when its channel count is
            off the block.
        structural: Structural choices that remove or add nodes, sorted.
    """

    def __init__(self, state: Mapping[str, Any]) -> None:
        self.nodes = [Node(name=n[0], op=n[1], lengths=tuple(n[2]), start=n[3], choice=n[4],
                           value=n[5]) for n in state["nodes"]]
        self.base = np.asarray(state["base"], dtype=np.int64)
        self.width = {name: (np.asarray(w["idx"], dtype=np.int64),
                             np.asarray(w["delta"], dtype=np.float64), int(w["channels"]),
                             int(w["removed"])) for name, w in state["width"].items()}
        self.removed = {(c, v): np.asarray(idx, dtype=np.int64)
                        for c, v, idx in state["removed"]}
        self.added: dict[tuple[str, str], list[int]] = {}
        for i, node in enumerate(self.nodes):
            if node.choice is not None and node.value is not None:
                self.added.setdefault((node.choice, node.value), []).append(i)
        self.initial = np.asarray([node.choice is None for node in self.nodes], dtype=bool)
        self.block = int(state.get("block", 16))
        self.misaligned = {c: idx for (c, v), idx in self.added.items() if v == MISALIGNED}
        self.structural = sorted({c for c, _ in self.removed}
                                 | {c for c, v in self.added if v != MISALIGNED})

    def cut_fraction(self, name: str, value: Any) -> float:
        """Share of width choice ``name``'s probed cut that option ``value`` makes
        (0 when it cuts nothing or the probe removed nothing)."""
        _, _, channels, removed = self.width[name]
        cut = channels - kept(channels, float(value))
        return cut / removed if cut and removed else 0.0

    def dims(self, arch: Mapping[str, Any]) -> list[int]:
        """The slot vector of the student ``arch``: every dimension of every kernel's shapes."""
        dims = self.base.astype(np.float64)
        for name, (idx, delta, _, _) in self.width.items():
            fraction = self.cut_fraction(name, arch[name])
            if fraction:
                dims[idx] -= delta * fraction
        return np.maximum(np.rint(dims), 1).astype(np.int64).tolist()

    def shapes(self, index: int, dims: Sequence[int]) -> tuple[tuple[int, ...], ...]:
        """Shapes of node ``index`` read off the slot vector ``dims``."""
        node = self.nodes[index]
        shapes, pos = [], node.start
        for length in node.lengths:
            shapes.append(tuple(dims[pos:pos + length]))
            pos += length
        return tuple(shapes)

    def active(self, arch: Mapping[str, Any]) -> np.ndarray:
        """Per node, whether the student ``arch`` runs it (bool)."""
        active = self.initial.copy()
        seen: set[str] = set()
        for name, extra in self.misaligned.items():
            if kept(self.width[name][2], float(arch[name])) % self.block:
                for i in extra:  # one reorder per tensor, however many groups it touches
                    if self.nodes[i].name not in seen:
                        seen.add(self.nodes[i].name)
                        active[i] = True
        for choice in self.structural:
            key = (choice, value_key(arch[choice]))
            if key in self.removed:
                active[self.removed[key]] = False
            if key in self.added:
                active[self.added[key]] = True
        return active

    def kernels(self, arch: Mapping[str, Any]) -> list[tuple[int, tuple[tuple[int, ...], ...]]]:
        """(node index, shapes) of every kernel the student ``arch`` runs, in node order."""
        dims = self.dims(arch)
        return [(i, self.shapes(i, dims)) for i in np.flatnonzero(self.active(arch)).tolist()]


def _flatten(kernels: Sequence[Kernel]) -> dict[str, tuple[str, tuple[tuple[int, ...], ...]]]:
    return {k.name: (k.op, k.shapes) for k in kernels}


def build_template(teacher: Sequence[Kernel], width: Mapping[str, tuple[list[Kernel], int, int]],
                    structural: Mapping[tuple[str, str], list[Kernel]], *,
                    block: int) -> dict[str, Any]:
    """The template's state from the teacher's profile and the probes' profiles.

    Args:
        teacher: Kernels of the teacher.
        width: Per width choice: kernels at its smallest option, the group's
            channels and the channels that option removes.
        structural: Per (structural choice, option as JSON): kernels of that probe.
        block: The runtime's SIMD channel block (:func:`simd_block`).
    """
    nodes: list[list[Any]] = []
    base: list[int] = []
    slots: dict[str, list[tuple[int, int]]] = {}  # name -> (start, length) per slot

    def add(kernel: Kernel, choice: str | None, value: str | None) -> int:
        lengths = [len(s) for s in kernel.shapes]
        start = len(base)
        nodes.append([kernel.name, kernel.op, lengths, start, choice, value])
        positions, pos = [], start
        for shape in kernel.shapes:
            base.extend(shape)
            positions.append((pos, len(shape)))
            pos += len(shape)
        if choice is None:
            slots[kernel.name] = positions
        return len(nodes) - 1

    for kernel in teacher:
        add(kernel, None, None)
    teacher_by_name = {k.name: k for k in teacher}
    deltas: dict[str, dict[int, float]] = {}
    for name, (kernels, channels, removed) in width.items():
        delta: dict[int, float] = {}
        for kernel in kernels:
            ref = teacher_by_name.get(kernel.name)
            if ref is None and (channels - removed) % block:
                # a kernel the runtime adds for a channel count off its SIMD block
                # (NCHWc reorders): it runs whenever this group's count is off the block
                add(kernel, name, MISALIGNED)
                continue
            if ref is None or [len(s) for s in ref.shapes] != [len(s) for s in kernel.shapes]:
                continue
            for (start, _), a, b in zip(slots[kernel.name], ref.shapes, kernel.shapes,
                                        strict=True):
                for j, (da, db) in enumerate(zip(a, b, strict=True)):
                    if da != db:
                        delta[start + j] = float(da - db)
        deltas[name] = delta
    removed_sets = []
    for (choice, value), kernels in structural.items():
        probe = _flatten(kernels)
        gone = [i for i, node in enumerate(nodes[:len(teacher)])
                if probe.get(node[0]) != (node[1], teacher_by_name[node[0]].shapes)]
        removed_sets.append([choice, value, gone])
        gone_slots: dict[tuple[int, ...], int] = {}
        for i in gone:
            for (start, _), shape in zip(slots[nodes[i][0]], teacher_by_name[nodes[i][0]].shapes,
                                         strict=True):
                gone_slots.setdefault(shape, start)
        known = {name: teacher_by_name[name] for name in teacher_by_name}
        for kernel in kernels:
            if kernel.name in known and known[kernel.name].shapes == kernel.shapes:
                continue
            index = add(kernel, choice, value)
            pos = nodes[index][3]
            for shape in kernel.shapes:
                source = gone_slots.get(shape)
                if source is not None:  # same shape as a slot it replaces: same widths
                    for delta in deltas.values():
                        for j in range(len(shape)):
                            if source + j in delta:
                                delta[pos + j] = delta[source + j]
                pos += len(shape)
    return {
        "nodes": nodes, "base": base, "removed": removed_sets, "block": block,
        "width": {name: {"idx": sorted(delta), "delta": [delta[i] for i in sorted(delta)],
                         "channels": width[name][1], "removed": width[name][2]}
                  for name, delta in deltas.items()},
    }
