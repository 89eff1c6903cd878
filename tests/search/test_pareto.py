from __future__ import annotations

import pytest

from protege.search import hypervolume, pareto_indices


def test_front_keeps_non_dominated_points_by_cost():
    points = [(0.9, 10), (0.8, 5), (0.85, 12), (0.95, 20), (0.8, 5), (0.7, 6)]
    assert pareto_indices(points) == [1, 0, 3]


def test_hypervolume_of_known_fronts():
    assert hypervolume([(0.5, 0.5)], reference=(0.0, 1.0)) == pytest.approx(0.25)
    two = hypervolume([(0.5, 0.2), (1.0, 0.6)], reference=(0.0, 1.0))
    assert two == pytest.approx(0.5 * 0.8 + 0.5 * 0.4)
    # Dominated and out-of-reference points add nothing.
    assert hypervolume([(0.5, 0.2), (1.0, 0.6), (0.4, 0.3), (0.9, 1.5)],
                       reference=(0.0, 1.0)) == pytest.approx(two)
    assert hypervolume([], reference=(0.0, 1.0)) == 0.0


def test_hypervolume_in_three_objectives_matches_boxes():
    # One point: a box; two points: two boxes minus their overlap.
    assert hypervolume([(0.5, 0.5, 0.5)], reference=(0.0, 1.0, 1.0)) == pytest.approx(0.125)
    volume = hypervolume([(0.5, 0.2, 0.6), (0.8, 0.6, 0.2)], reference=(0.0, 1.0, 1.0))
    first, second = 0.5 * 0.8 * 0.4, 0.8 * 0.4 * 0.8
    overlap = 0.5 * 0.4 * 0.4
    assert volume == pytest.approx(first + second - overlap)
    # A point beyond the reference in any objective adds nothing.
    assert hypervolume([(0.5, 0.5, 1.5)], reference=(0.0, 1.0, 1.0)) == 0.0
