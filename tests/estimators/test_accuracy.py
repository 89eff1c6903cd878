from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from protege.estimators import AccuracyPredictor, extrapolate, prob_dominated


def _synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.choice([0.25, 0.5, 0.75, 1.0], size=(n, 4))
    y = 0.6 + 0.1 * x[:, 0] + 0.05 * x[:, 1] + 0.02 * np.sqrt(x[:, 2]) + rng.normal(0, 0.003, n)
    return x, y


@pytest.mark.parametrize("kind", ["gp", "forest"])
def test_recovers_a_known_ranking(kind):
    x, y = _synthetic(60, seed=0)
    model = AccuracyPredictor(kind=kind, seed=0, restarts=1).fit(x[:40], y[:40])
    mean, std = model.predict(x[40:])
    assert kendalltau(mean, y[40:]).statistic > 0.6
    assert mean.shape == std.shape == (20,) and np.all(std > 0)


@pytest.mark.parametrize("kind", ["gp", "forest"])
def test_predictions_are_deterministic_for_a_seed(kind):
    x, y = _synthetic(30, seed=1)
    first = AccuracyPredictor(kind=kind, seed=3).fit(x, y).predict(x[:5])
    second = AccuracyPredictor(kind=kind, seed=3).fit(x, y).predict(x[:5])
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_predict_before_fit_and_bad_shapes_are_clear_errors():
    with pytest.raises(RuntimeError, match="before fit"):
        AccuracyPredictor().predict(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="need X"):
        AccuracyPredictor().fit(np.zeros((3, 2)), np.zeros(2))


def test_probability_of_being_dominated():
    front = [(0.90, (100.0, 2.0)), (0.80, (10.0, 1.0))]
    # cheaper than every member on one axis: nothing can dominate it
    assert prob_dominated(0.5, 0.01, (5.0, 5.0), front) == 0.0
    # costs as much as the 0.80 member: dominated unless clearly more accurate
    assert prob_dominated(0.70, 0.01, (10.0, 1.0), front) > 0.99
    assert prob_dominated(0.85, 0.01, (10.0, 1.0), front) < 0.01
    assert prob_dominated(0.80, 0.05, (10.0, 1.0), front) == pytest.approx(0.5)
    # the best affordable member is the one that counts
    assert prob_dominated(0.85, 0.01, (200.0, 3.0), front) > 0.99
    assert prob_dominated(0.85, 0.0, 150.0, [(0.9, 100.0)]) == 1.0
    with pytest.raises(ValueError, match="does not match"):
        prob_dominated(0.5, 0.1, (1.0, 2.0), [(0.9, 1.0)])


def test_extrapolates_a_saturating_curve():
    curve = [0.9 - 0.3 / t for t in range(1, 6)]
    mean, std = extrapolate(curve, 20)
    assert mean == pytest.approx(0.9 - 0.3 / 20, abs=0.02)
    assert 0 < std < 0.05
    short_mean, short_std = extrapolate([0.5, 0.6], 10)
    assert short_mean == 0.6 and short_std > std
    assert extrapolate(curve, 5) == (curve[-1], 0.0)
    with pytest.raises(ValueError):
        extrapolate(curve, 3)
