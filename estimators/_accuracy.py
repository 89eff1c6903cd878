"""Accuracy predicted from an architecture's encoding, a running trial's curve, and domination."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
from sklearn.preprocessing import StandardScaler

__all__ = ["AccuracyPredictor", "extrapolate", "prob_dominated"]

logger = logging.getLogger(__name__)


class AccuracyPredictor:
    """Learns validation accuracy from encoded architectures; gives a mean and a std.

    ``kind="gp"`` (default) is a Gaussian process with an ARD Matern-5/2 kernel plus
    white noise on standardised inputs and targets: the std is its posterior std,
    noise included. ``kind="forest"`` is a random forest whose std is the spread of
    its trees. Both are deterministic for a given ``seed``. Useful inputs are
    ``space.encode(arch)``, optionally with ``log(macs)`` appended.

    Args:
        kind: ``"gp"`` or ``"forest"``.
        seed: Seeds the optimiser restarts (GP) or the bootstrap (forest).
        restarts: Kernel-optimiser restarts of the GP.
        trees: Trees of the forest (fitting costs about 2 ms per tree).
    """

    def __init__(self, *, kind: Literal["gp", "forest"] = "gp", seed: int = 0,
                 restarts: int = 3, trees: int = 200) -> None:
        if kind not in ("gp", "forest"):
            raise ValueError(f"kind must be 'gp' or 'forest', got {kind!r}")
        self.kind = kind
        self.seed = seed
        self.restarts = restarts
        self.trees = trees
        self._scaler: StandardScaler | None = None
        self._model: GaussianProcessRegressor | RandomForestRegressor | None = None
        self.n_fitted = 0

    def fit(self, X: np.ndarray, y: np.ndarray) -> AccuracyPredictor:  # noqa: N803
        """Fit on ``X`` of shape (trials, features) and accuracies ``y``; returns self."""
        X = np.asarray(X, dtype=float)  # noqa: N806
        y = np.asarray(y, dtype=float).ravel()
        if X.ndim != 2 or len(X) != len(y) or len(y) < 2:
            raise ValueError(f"need X (n, d) and y (n,) with n >= 2; got {X.shape}, {y.shape}")
        self._scaler = StandardScaler().fit(X)
        Z = self._scaler.transform(X)  # noqa: N806
        if self.kind == "gp":
            dims = X.shape[1]
            kernel = (ConstantKernel(1.0, (1e-3, 1e3))
                      * Matern(length_scale=np.ones(dims), length_scale_bounds=(1e-2, 1e3), nu=2.5)
                      + WhiteKernel(0.1, (1e-6, 1.0)))
            self._model = GaussianProcessRegressor(
                kernel=kernel, normalize_y=True, n_restarts_optimizer=self.restarts,
                random_state=self.seed)
        else:
            self._model = RandomForestRegressor(
                n_estimators=self.trees, min_samples_leaf=2, random_state=self.seed)
        with warnings.catch_warnings():
            # ARD length scales of irrelevant inputs run to their bound: expected, harmless
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._model.fit(Z, y)
        self.n_fitted = len(y)
        return self

    def predict(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
        """Mean and std of the predicted accuracy of each row of ``X``."""
        if self._model is None or self._scaler is None:
            raise RuntimeError("AccuracyPredictor.predict called before fit")
        Z = self._scaler.transform(np.atleast_2d(np.asarray(X, dtype=float)))  # noqa: N806
        if isinstance(self._model, GaussianProcessRegressor):
            mean, std = self._model.predict(Z, return_std=True)
        else:
            per_tree = np.stack([tree.predict(Z) for tree in self._model.estimators_])
            mean, std = per_tree.mean(axis=0), per_tree.std(axis=0)
        return np.asarray(mean, dtype=float), np.maximum(np.asarray(std, dtype=float), 1e-9)


def _normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def prob_dominated(
    mean: float,
    std: float,
    cost: float | Sequence[float],
    front: Sequence[tuple[float, float | Sequence[float]]],
    *,
    margin: float = 0.0,
) -> float:
    """Probability that a student is dominated by a Pareto front.

    Accuracy is maximised and every cost (MACs, latency, ...) minimised. The
    student's costs are known exactly; its accuracy is ``Normal(mean, std)``. It is
    dominated when some front member costs no more on every axis and is at least as
    accurate, so the probability is ``P(acc <= best)`` where ``best`` is the highest
    accuracy among members that are no costlier.

    Args:
        mean: Predicted accuracy.
        std: Its uncertainty (0 for a certain value).
        cost: The student's cost, a number or one number per axis.
        front: ``(accuracy, cost)`` of each front member, costs shaped like ``cost``.
        margin: Accuracy a student must beat ``best`` by to count as not dominated.

    Returns:
        A probability in [0, 1]; 0 when no member is cheaper on every axis.
    """
    mine = np.atleast_1d(np.asarray(cost, dtype=float))
    best = -math.inf
    for accuracy, member_cost in front:
        theirs = np.atleast_1d(np.asarray(member_cost, dtype=float))
        if theirs.shape != mine.shape:
            raise ValueError(f"front cost {theirs.tolist()} does not match cost {mine.tolist()}")
        if np.all(theirs <= mine):
            best = max(best, float(accuracy))
    if best == -math.inf:
        return 0.0
    threshold = best + margin
    if std <= 0:
        return 1.0 if mean <= threshold else 0.0
    return _normal_cdf((threshold - mean) / std)


def extrapolate(history: Sequence[float], total_epochs: int) -> tuple[float, float]:
    """Predict a running trial's final accuracy from its per-epoch accuracies.

    Fits ``acc(t) = a - b * t**-c`` for ``c`` in {0.5, 1, 2} by least squares and
    averages the three forecasts at ``total_epochs``; the std combines their
    disagreement with the fits' residuals. With fewer than three points there is
    nothing to fit: the forecast is the last value, with a std of a third of the
    distance still left to 1.0 plus 0.01 (a deliberately wide guess).

    Args:
        history: Validation accuracy after epochs 1, 2, ... (fractions in [0, 1]).
        total_epochs: The epoch to forecast (>= ``len(history)``).

    Returns:
        ``(mean, std)`` of the accuracy after ``total_epochs``.
    """
    values = np.asarray(history, dtype=float)
    if values.size == 0:
        raise ValueError("history is empty")
    if total_epochs < values.size:
        raise ValueError(f"total_epochs {total_epochs} is before the last epoch {values.size}")
    last = float(values[-1])
    if values.size < 3 or total_epochs == values.size:
        left = 0.0 if total_epochs == values.size else max(0.0, 1.0 - last) / 3 + 0.01
        return last, left
    epochs = np.arange(1, values.size + 1, dtype=float)
    forecasts, residuals = [], []
    for power in (0.5, 1.0, 2.0):
        design = np.column_stack([np.ones_like(epochs), -(epochs ** -power)])
        (a, b), *_ = np.linalg.lstsq(design, values, rcond=None)
        forecasts.append(a - b * total_epochs ** -power)
        residuals.append(float(np.sqrt(np.mean((design @ np.array([a, b]) - values) ** 2))))
    ceiling = max(1.0, float(values.max()))
    mean = float(np.clip(np.mean(forecasts), values.min(), ceiling))
    std = float(np.hypot(np.std(forecasts), np.mean(residuals))) + 1e-3
    return mean, std
