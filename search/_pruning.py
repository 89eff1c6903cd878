"""protege's multi-objective trial pruning, which Optuna's single-objective pruners lack.

A rule looks at a running trial and says why it should stop, or None. Every
firing is recorded in the trial's ``pruned_reason`` with the numbers behind it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import optuna
from optuna.trial import TrialState

__all__ = ["CurveRule", "PruningRule"]


class PruningRule(abc.ABC):
    """Decides whether a training trial should stop after an epoch."""

    @abc.abstractmethod
    def check(self, study: optuna.Study, *, epoch: int, epochs: int, accuracy: float,
              costs: Mapping[str, float]) -> str | None:
        """The reason to stop the trial now, or None to let it go on."""


class CurveRule(PruningRule):
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

    def check(self, study: optuna.Study, *, epoch: int, epochs: int, accuracy: float,
              costs: Mapping[str, float]) -> str | None:
        if epoch >= epochs - 1:
            return None  # the last epoch is paid for already
        finished = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.user_attrs.get("duplicate_of") is None
                    and len(t.user_attrs.get("history") or ()) == epochs]
        if len(finished) < self.min_trials:
            return None
        late_gain = max(t.user_attrs["history"][-1] - t.user_attrs["history"][epoch]
                        for t in finished)
        optimistic = accuracy + max(0.0, late_gain) + self.margin
        cheaper = [t for t in finished
                   if all(t.user_attrs.get(name, float("inf")) <= value
                          for name, value in costs.items())]
        if not cheaper:
            return None
        best = max(cheaper, key=lambda t: (t.values[0], -t.number))
        if optimistic >= best.values[0]:
            return None
        return (f"curve: after epoch {epoch + 1}/{epochs} accuracy {accuracy:.4f} + largest late "
                f"gain {late_gain:.4f} + margin {self.margin} = {optimistic:.4f} < "
                f"{best.values[0]:.4f} of trial {best.number}, which costs no more")
