"""Pareto front and hypervolume of (accuracy up, costs down) points."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["dominates", "hypervolume", "pareto_indices"]

Point = Sequence[float]
"""``(accuracy, cost, ...)``: accuracy is maximised, every cost minimised."""


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    at_least = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:], strict=True))
    better = a[0] > b[0] or any(x < y for x, y in zip(a[1:], b[1:], strict=True))
    return at_least and better


def pareto_indices(points: Sequence[Point]) -> list[int]:
    """Indices of the non-dominated points, by increasing first cost.

    Of exact duplicates, the first is kept.
    """
    front: list[int] = []
    for i, point in enumerate(points):
        if any(dominates(other, point) for other in points):
            continue
        if any(tuple(points[j]) == tuple(point) for j in front):
            continue
        front.append(i)
    return sorted(front, key=lambda i: (tuple(points[i][1:]), -points[i][0], i))


def hypervolume(points: Sequence[Point], *, reference: Point) -> float:
    """Volume dominated by ``(accuracy, cost, ...)`` points and bounded by ``reference``.

    ``reference`` is (lowest accuracy, highest cost, ...), e.g. chance accuracy and
    the teacher's costs; points outside it add nothing. Exact, by slicing along the
    last cost (fine for the few hundred points of a study).
    """
    dims = len(reference)
    # As minimisation: accuracy is negated, so every coordinate is "lower is better".
    ref = (-reference[0], *reference[1:])
    flipped = [(-p[0], *p[1:]) for p in points if len(p) == dims]
    inside = [p for p in flipped if all(x < r for x, r in zip(p, ref, strict=True))]
    return _volume([tuple(map(float, p)) for p in inside], tuple(map(float, ref)))


def scaled_hypervolume(points: Iterable[tuple[float, Mapping[str, float]]], *,
                       teacher_costs: Mapping[str, float], chance: float) -> float:
    """Hypervolume of ``(accuracy, costs)`` points, every cost divided by the teacher's,
    against the reference (``chance``, the teacher's costs): the study's reported volume
    and the gain rule's bound are both this one.
    """
    names = list(teacher_costs)
    scaled = [(accuracy, *(float(costs[n]) / teacher_costs[n] for n in names))
              for accuracy, costs in points]
    return hypervolume(scaled, reference=(chance, *([1.0] * len(names))))


def _volume(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    ordered = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for i, point in enumerate(ordered):
        top = ordered[i + 1][-1] if i + 1 < len(ordered) else ref[-1]
        if top > point[-1]:
            volume += (top - point[-1]) * _volume([p[:-1] for p in ordered[:i + 1]], ref[:-1])
    return volume
