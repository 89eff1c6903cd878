"""Cost tables of a kernel template, so that a latency prediction is a gather and a sum.

Walking the template for each prediction (:meth:`Template.kernels`: slot arithmetic,
shape tuples, a dictionary lookup per kernel, a regression for shapes the table
lacks) costs about 0.1 ms on a warm interpreter and 1-4 ms right after the runtime
has run a student, as in a search or a benchmark. Yet a kernel's shapes depend only
on the few width choices that change one of its dimensions (a convolution: the
groups of its input and its output channels), and whether it runs only on
structural choices and on the channel counts that put a reorder in. So every
kernel's cost under every combination of its width choices' options is computed
once, and a prediction only indexes those tables with the architecture's option
indices. The prediction itself is plain Python on lists: right after the runtime has
run, the first call of each numpy function costs 0.1-1 ms here (measured on this
project's 2-core VMs), more than the whole prediction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from protege.estimators._kernels import Shapes
from protege.estimators._template import MISALIGNED, Template, kept, value_key

__all__ = ["KernelCosts", "NodeCosts"]

NodeCosts = Callable[[int, Sequence[Shapes]], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""(node index, its shapes under K option combinations) -> (ms, variance ms², table miss),
three arrays of length K."""

MAX_COMBINATIONS = 4096
"""Largest table of one kernel. A kernel whose shapes depend on more option
combinations (a concatenation of many groups) is costed per prediction instead."""


class KernelCosts:
    """Cost of every kernel of a template under every option combination it depends on.

    Args:
        template: The space's kernel template.
        choices: The space's choices: name -> options, in the space's order.
        costs: Cost of one node under given shapes (the predictor's kernel table and
            its regressions for shapes the table lacks).
    """

    def __init__(self, *, template: Template, choices: Mapping[str, Sequence[Any]],
                 costs: NodeCosts) -> None:
        self._template = template
        self._costs = costs
        self._names = list(choices)
        self._index = [{value: i for i, value in enumerate(choices[name])} for name in self._names]
        self._column = [0]  # first (choice, option) column of each choice
        for name in self._names:
            self._column.append(self._column[-1] + len(choices[name]))
        self._initial = template.initial.tolist()
        self._node_names = [node.name for node in template.nodes]
        self._deps: list[list[tuple[int, int]]] = []  # per node: (choice position, stride)
        self._offsets: list[int] = []  # per node: first row of its table (0: costed apart)
        self._large: list[int] = []
        self._ms, self._var, self._miss = [0.0], [0.0], [False]  # row 0: zero cost
        for i in range(len(template.nodes)):
            self._add_table(i, choices)
        self._removes, self._adds, self._reorders = self._switches(choices)

    def _add_table(self, index: int, choices: Mapping[str, Sequence[Any]]) -> None:
        """Cost node ``index`` under every combination of the options of the width
        choices that change one of its dimensions; append the rows to the tables."""
        template = self._template
        node = template.nodes[index]
        span = slice(node.start, node.start + sum(node.lengths))
        deps = [name for name, (idx, _, _, _) in template.width.items()
                if bool(((idx >= span.start) & (idx < span.stop)).any())]
        sizes = [len(choices[name]) for name in deps]
        count = math.prod(sizes)
        if count > MAX_COMBINATIONS:
            self._large.append(index)
            self._deps.append([])
            self._offsets.append(0)
            return
        strides = [math.prod(sizes[j + 1:]) for j in range(len(deps))]  # row-major
        self._deps.append([(self._names.index(name), stride)
                           for name, stride in zip(deps, strides, strict=True)])
        self._offsets.append(len(self._ms))
        combos = np.asarray(list(itertools.product(*map(range, sizes))),
                            dtype=np.intp).reshape(count, len(deps))
        dims = np.tile(template.base[span].astype(np.float64), (count, 1))
        for j, name in enumerate(deps):  # the order and arithmetic of Template.dims
            idx, delta, _, _ = template.width[name]
            inside = (idx >= span.start) & (idx < span.stop)
            for option, value in enumerate(choices[name]):
                fraction = template.cut_fraction(name, value)
                if fraction:
                    rows = np.flatnonzero(combos[:, j] == option)
                    dims[np.ix_(rows, idx[inside] - span.start)] -= delta[inside] * fraction
        ends = np.cumsum(node.lengths).tolist()
        shapes = [tuple(tuple(row[end - length:end])
                        for length, end in zip(node.lengths, ends, strict=True))
                  for row in np.maximum(np.rint(dims), 1).astype(np.int64).tolist()]
        ms, var, miss = self._costs(index, shapes)
        self._ms += ms.tolist()
        self._var += var.tolist()
        self._miss += miss.tolist()

    def _switches(self, choices: Mapping[str, Sequence[Any]]
                  ) -> tuple[list[list[int]], list[list[int]],
                             list[tuple[int, frozenset[int], list[int]]]]:
        """Nodes each (choice, option) column removes and adds, and the reorder plan:
        (choice position, its options off the SIMD block, its reorder nodes), in the
        template's order."""
        template = self._template
        columns = self._column[-1]
        removes: list[list[int]] = [[] for _ in range(columns)]
        adds: list[list[int]] = [[] for _ in range(columns)]

        def column(choice: str, key: str) -> int | None:
            if choice not in choices:
                return None
            keys = [value_key(value) for value in choices[choice]]
            if key not in keys:
                return None
            return self._column[self._names.index(choice)] + keys.index(key)

        for (choice, key), idx in template.removed.items():
            if (col := column(choice, key)) is not None:
                removes[col] += idx.tolist()
        for (choice, key), nodes in template.added.items():
            if key != MISALIGNED and (col := column(choice, key)) is not None:
                adds[col] += nodes
        reorders = []
        for name, nodes in template.misaligned.items():
            if name in choices:
                channels = template.width[name][2]
                off = frozenset(option for option, value in enumerate(choices[name])
                                if kept(channels, float(value)) % template.block)
                reorders.append((self._names.index(name), off, list(nodes)))
        return removes, adds, reorders

    def active(self, arch: Mapping[str, Any]) -> tuple[list[int], list[bool]]:
        """(option index per choice, whether each node runs) of a repaired ``arch``;
        the rule of :meth:`Template.active`."""
        options = [index[arch[name]] for name, index in zip(self._names, self._index,
                                                              strict=True)]
        active = self._initial.copy()
        for column, option in zip(self._column, options, strict=False):
            for i in self._removes[column + option]:
                active[i] = False
            for i in self._adds[column + option]:
                active[i] = True
        seen: set[str] = set()
        for position, off, nodes in self._reorders:
            if options[position] in off:
                for i in nodes:  # one reorder per tensor, however many groups it touches
                    if self._node_names[i] not in seen:
                        seen.add(self._node_names[i])
                        active[i] = True
        return options, active

    def evaluate(self, arch: Mapping[str, Any]) -> tuple[float, float, int, int]:
        """(sum of kernel ms, its variance in ms², kernels run, kernels missing from the
        table) of the student ``arch``, which must be repaired (``space.repair``)."""
        options, active = self.active(arch)
        total = variance = 0.0
        count = misses = 0
        for i, on in enumerate(active):
            if on:
                row = self._offsets[i]
                for position, stride in self._deps[i]:
                    row += options[position] * stride
                total += self._ms[row]
                variance += self._var[row]
                misses += self._miss[row]
                count += 1
        live = [i for i in self._large if active[i]]
        if live:
            dims = self._template.dims(arch)
            for i in live:
                ms, var, miss = self._costs(i, [self._template.shapes(i, dims)])
                total += float(ms[0])
                variance += float(var[0])
                misses += int(miss[0])
        return total, variance, count, misses
