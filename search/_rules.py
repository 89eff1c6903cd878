"""Rules that skip a student before training or stop it during training.

Optuna's pruners are single-objective (optuna#2792, #3450); these rules judge a
student against the multi-objective front. A rule sees only the records of the
trials finished before it (no storage, no backend), so the in-process backend,
workers on one storage and Ray apply the same rule to the same history. Every
firing is recorded as the trial's reason, with the numbers behind it.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence

import numpy as np

from protege.search._pareto import scaled_hypervolume
from protege.search._records import TrialRecord

__all__ = ["CurveRule", "GainRule", "PredictorRule", "TrialRule"]


class TrialRule(abc.ABC):  # noqa: B024 (hooks are optional, like Lightning callbacks)
    """Decides whether a trial should be skipped before training or stopped during it.

    Both hooks get ``finished``, the records of the trials finished before this one,
    and return the reason to skip or stop, or None; a rule overrides the hooks it needs.
    """

    def before_training(self, finished: Sequence[TrialRecord], *, features: Sequence[float],
                        costs: Mapping[str, float]) -> str | None:
        """Called once the student's costs are known, before any training (skip)."""
        return None

    def after_epoch(self, finished: Sequence[TrialRecord], *, epoch: int, epochs: int,
                    accuracy: float, costs: Mapping[str, float]) -> str | None:
        """Called after each training epoch with the validation accuracy (stop)."""
        return None


def _trained(finished: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Trials that trained to the end (not copies of an earlier identical student)."""
    return [r for r in finished if r.trained and r.accuracy is not None]


def _cost(record: TrialRecord, name: str) -> float:
    value = record.costs().get(name)
    return math.inf if value is None else float(value)


class CurveRule(TrialRule):
    """Stops a student whose learning curve cannot reach the front at its cost.

    After epoch ``e`` of ``E``, the student's most optimistic final accuracy is its
    current accuracy plus the largest gain any finished trial made from epoch
    ``e`` to its end, plus ``margin``. If a finished student that costs no more
    (on every cost) is already more accurate than that, this one would be
    dominated: it stops.

    Args:
        min_trials: Finished trials with full curves needed before the rule fires.
        margin: Accuracy added to the optimistic estimate.
    """

    def __init__(self, *, min_trials: int = 5, margin: float = 0.005) -> None:
        self.min_trials = min_trials
        self.margin = margin

    def after_epoch(self, finished: Sequence[TrialRecord], *, epoch: int, epochs: int,
                    accuracy: float, costs: Mapping[str, float]) -> str | None:
        if epoch >= epochs - 1:
            return None  # the last epoch is paid for already
        full = [r for r in _trained(finished) if len(r.history) == epochs]
        if len(full) < self.min_trials:
            return None
        late_gain = max(r.history[-1] - r.history[epoch] for r in full)
        optimistic = accuracy + max(0.0, late_gain) + self.margin
        cheaper = [r for r in full
                   if all(_cost(r, name) <= value for name, value in costs.items())]
        if not cheaper:
            return None
        best = max(cheaper, key=lambda r: (r.accuracy or 0.0, -r.number))
        best_accuracy = best.accuracy or 0.0
        if optimistic >= best_accuracy:
            return None
        return (f"curve: after epoch {epoch + 1}/{epochs} accuracy {accuracy:.4f} + largest late "
                f"gain {late_gain:.4f} + margin {self.margin} = {optimistic:.4f} < "
                f"{best_accuracy:.4f} of trial {best.number}, which costs no more")


class PredictorRule(TrialRule):
    """Skips, before any training, a student predicted to be dominated by the front.

    An accuracy predictor (a seeded forest over the encoded architecture and
    log-MACs, from ``protege.estimators``) is fitted on the finished trials; the
    student is skipped when the probability that a finished student that costs no
    more is at least as accurate exceeds ``threshold``.

    Args:
        min_trials: Finished trials needed before the rule fires.
        threshold: Probability of being dominated that skips a student.
        seed: Seed of the predictor.
    """

    def __init__(self, *, min_trials: int = 20, threshold: float = 0.95, seed: int = 0) -> None:
        self.min_trials = min_trials
        self.threshold = threshold
        self.seed = seed

    def before_training(self, finished: Sequence[TrialRecord], *, features: Sequence[float],
                        costs: Mapping[str, float]) -> str | None:
        from protege.estimators import AccuracyPredictor, prob_dominated

        known = [r for r in _trained(finished) if r.features]
        if len(known) < self.min_trials:
            return None
        x = np.asarray([r.features for r in known], dtype=np.float64)
        y = np.asarray([r.accuracy for r in known], dtype=np.float64)
        # 50 trees: refitted before every trial, so its cost is controller overhead.
        predictor = AccuracyPredictor(kind="forest", seed=self.seed, trees=50).fit(x, y)
        mean, std = predictor.predict(np.asarray([features], dtype=np.float64))
        names = list(costs)
        front = [(r.accuracy or 0.0, tuple(_cost(r, n) for n in names)) for r in known]
        cost = tuple(float(costs[n]) for n in names)
        probability = prob_dominated(float(mean[0]), float(std[0]), cost, front)
        if probability <= self.threshold:
            return None
        return (f"predictor: accuracy {float(mean[0]):.4f} ± {float(std[0]):.4f} predicted from "
                f"{len(known)} trials; dominated by a finished student that costs no more "
                f"with probability {probability:.3f} > {self.threshold}")


class GainRule(TrialRule):
    """Skips, before any training, a student that cannot add to the front's hypervolume.

    No student is assumed to end more than ``margin`` above the most accurate
    finished one. If even at that best-case accuracy the student would add less
    than ``min_gain`` (a fraction) to the hypervolume of the finished trials, its
    training could not change the front enough to matter: it is skipped. This is a
    bound, not a prediction: a student cheaper than every good one always adds a
    slab of its own and is trained; what gets skipped are costlier variants of
    students the front already has.

    Costs are divided by the teacher's, and the volume is bounded by chance
    accuracy and the teacher's costs, as the study's reported hypervolume is.

    Args:
        teacher_costs: The teacher's value of every cost objective (``macs`` ...).
        chance: Accuracy of guessing, the reference point's accuracy.
        min_gain: Hypervolume gain, as a fraction of the current volume, below which
            a student is skipped.
        margin: How far above the best finished accuracy a student may end.
        min_trials: Finished trials needed before the rule fires.
    """

    def __init__(self, *, teacher_costs: Mapping[str, float], chance: float,
                 min_gain: float = 0.01, margin: float = 0.005, min_trials: int = 5) -> None:
        self.teacher_costs = dict(teacher_costs)
        self.chance = chance
        self.min_gain = min_gain
        self.margin = margin
        self.min_trials = min_trials

    def before_training(self, finished: Sequence[TrialRecord], *, features: Sequence[float],
                        costs: Mapping[str, float]) -> str | None:
        trained = _trained(finished)
        if len(trained) < self.min_trials:
            return None
        points = [(r.accuracy or 0.0, {n: _cost(r, n) for n in self.teacher_costs})
                  for r in trained]
        scale = {"teacher_costs": self.teacher_costs, "chance": self.chance}
        volume = scaled_hypervolume(points, **scale)
        best = min(1.0, max(accuracy for accuracy, _ in points) + self.margin)
        gain = scaled_hypervolume([*points, (best, costs)], **scale) - volume
        if volume <= 0.0 or gain >= self.min_gain * volume:
            return None
        return (f"gain: even at accuracy {best:.4f} (best finished + margin {self.margin}) this "
                f"student would add {gain / volume:.2%} to the front's hypervolume "
                f"{volume:.4f} of {len(trained)} trials, below min_gain {self.min_gain:.2%}")
