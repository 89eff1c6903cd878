"""Pareto front and hypervolume of (accuracy up, costs down) points."""

from __future__ import annotations

from collections.abc import Sequence

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


def hypervolume(points: Sequence[tuple[float, float]], *, reference: tuple[float, float]) -> float:
    """Area dominated by ``(accuracy, cost)`` points and bounded by ``reference``.

    ``reference`` is (lowest accuracy, highest cost); points outside it add nothing.
    """
    ref_accuracy, ref_cost = reference
    inside = [(a, c) for a, c in points if a > ref_accuracy and c < ref_cost]
    area = 0.0
    previous_accuracy = ref_accuracy
    for i in pareto_indices(inside):
        accuracy, cost = inside[i]
        area += (accuracy - previous_accuracy) * (ref_cost - cost)
        previous_accuracy = accuracy
    return area
