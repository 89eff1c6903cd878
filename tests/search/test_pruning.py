from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from protege.search import CurveRule


def finished(number: int, history: list[float], macs: float) -> optuna.trial.FrozenTrial:
    return create_trial(state=TrialState.COMPLETE, values=[history[-1], macs],
                        user_attrs={"history": history, "macs": macs, "params": 10})


@pytest.fixture
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i, (history, macs) in enumerate([
        ([0.80, 0.88, 0.90, 0.91], 100.0),   # largest gain from epoch 1 on: 0.05
        ([0.70, 0.86, 0.89, 0.91], 300.0),
        ([0.85, 0.93, 0.95, 0.96], 200.0),
    ]):
        study.add_trial(finished(i, history, macs))
    return study


def test_stops_a_student_that_cannot_catch_a_cheaper_one(study):
    rule = CurveRule(min_trials=3, margin=0.005)
    reason = rule.after_epoch(study, epoch=1, epochs=4, accuracy=0.85, costs={"macs": 250.0})
    # 0.85 + largest late gain from epoch 2 (0.96 - 0.93 = 0.03; 0.91 - 0.86 = 0.05) + margin
    assert reason is not None and "0.9050 < 0.9600 of trial 2" in reason


def test_lets_promising_or_cheapest_students_go_on(study):
    rule = CurveRule(min_trials=3, margin=0.005)
    assert rule.after_epoch(study, epoch=1, epochs=4, accuracy=0.92, costs={"macs": 250.0}) is None
    # Nothing finished costs as little: this student cannot be dominated yet.
    assert rule.after_epoch(study, epoch=1, epochs=4, accuracy=0.5, costs={"macs": 50.0}) is None
    # The last epoch is already paid for.
    assert rule.after_epoch(study, epoch=3, epochs=4, accuracy=0.5, costs={"macs": 250.0}) is None


def test_waits_for_enough_finished_trials(study):
    rule = CurveRule(min_trials=4)
    assert rule.after_epoch(study, epoch=1, epochs=4, accuracy=0.5, costs={"macs": 250.0}) is None
