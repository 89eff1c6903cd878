"""Pareto front and hypervolume of (accuracy up, cost down) points."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["hypervolume", "pareto_indices"]


def pareto_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated ``(accuracy, cost)`` points, by increasing cost.

    A point is dominated when another has accuracy >= and cost <=, one of them
    strictly. Of exact duplicates, the first is kept.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][0] > best:
            front.append(i)
            best = points[i][0]
    return front


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
