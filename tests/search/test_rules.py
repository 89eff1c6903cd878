from __future__ import annotations

import pytest

from protege.search import CurveRule, GainRule, Outcome, TrialRecord, hypervolume


def finished(number: int, history: list[float], macs: int) -> TrialRecord:
    return TrialRecord(number=number, outcome=Outcome.TRAINED, arch={}, accuracy=history[-1],
                       macs=macs, params=10, history=tuple(history))


@pytest.fixture
def study() -> list[TrialRecord]:
    """The records the rules judge against: no storage, no backend."""
    records = [finished(i, history, macs) for i, (history, macs) in enumerate([
        ([0.80, 0.88, 0.90, 0.91], 100),   # largest gain from epoch 1 on: 0.05
        ([0.70, 0.86, 0.89, 0.91], 300),
        ([0.85, 0.93, 0.95, 0.96], 200),
    ])]
    # Records a rule must ignore: a reused copy, a rejected and a stopped student.
    records += [
        TrialRecord(number=3, outcome=Outcome.REUSED, arch={}, accuracy=0.99, macs=10,
                    duplicate_of=0, history=(0.80, 0.88, 0.90, 0.91)),
        TrialRecord(number=4, outcome=Outcome.REJECTED, arch={}, macs=5),
        TrialRecord(number=5, outcome=Outcome.STOPPED, arch={}, macs=6, history=(0.99,)),
    ]
    return records


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


# Teacher: 1000 MACs, 10 classes. Finished (accuracy, MAC ratio): (0.91, 0.1), (0.91, 0.3),
# (0.96, 0.2): the front is (0.91, 0.1) and (0.96, 0.2).
def gain_rule(**kwargs) -> GainRule:
    return GainRule(teacher_costs={"macs": 1000.0}, chance=0.1, **kwargs)


def test_gain_rule_skips_a_costlier_variant_of_the_front(study):
    rule = gain_rule(min_gain=0.01, margin=0.005, min_trials=3)
    # At best 0.965 for 0.6 of the teacher's MACs: a 0.005 x 0.4 slab, 0.26 % of 0.769.
    reason = rule.before_training(study, features=[], costs={"macs": 600.0})
    assert reason is not None and reason.startswith("gain:")
    assert "0.9650" in reason and "0.26%" in reason


def test_gain_rule_trains_cheaper_students_and_respects_its_knobs(study):
    rule = gain_rule(min_gain=0.01, margin=0.005, min_trials=3)
    # Cheaper than every finished student: a slab of its own, whatever its accuracy.
    assert rule.before_training(study, features=[], costs={"macs": 50.0}) is None
    # A large margin could lift it over the front: trained.
    assert gain_rule(min_gain=0.01, margin=0.05, min_trials=3).before_training(
        study, features=[], costs={"macs": 600.0}) is None
    assert gain_rule(min_gain=0.001, min_trials=3).before_training(
        study, features=[], costs={"macs": 600.0}) is None
    assert gain_rule(min_trials=4).before_training(study, features=[], costs={"macs": 600.0}) \
        is None


def test_gain_rule_gain_matches_the_hypervolume_difference(study):
    front = [(0.91, 0.1), (0.91, 0.3), (0.96, 0.2)]
    before = hypervolume(front, reference=(0.1, 1.0))
    after = hypervolume([*front, (0.965, 0.6)], reference=(0.1, 1.0))
    assert after - before == pytest.approx(0.005 * 0.4)
