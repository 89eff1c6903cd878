"""method: rungs: the ladder, MO-ASHA promotion, the claim protocol, and a whole study."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from optuna.trial import TrialState
from tiny_nets import make_tiny_net, open_tiny_study, tiny_config

from protege.search import Config, ConfigError, Outcome, TrialRecord
from protege.search import _attrs as attrs
from protege.search._rungs import (
    LimitRule,
    _claim,
    claimed,
    crowding_distances,
    hypervolume_contributions,
    next_promotion,
    nondominated_ranks,
    predicted_gap,
    promotion_order,
    uniform_ladder,
)
from protege.spaces import derive


def rungs_config(**overrides) -> Config:
    return tiny_config({"method": "rungs", "n_trials": 8, "strategy": "random",
                        "rungs": {"eta": 2, "min_epochs": 1, "calibration_samples": 64}},
                       **overrides)


def student(number: int, rungs: tuple[float, ...], macs: int) -> TrialRecord:
    return TrialRecord(number=number, outcome=Outcome.TRAINED, arch={}, accuracy=rungs[-1],
                       macs=macs, params=macs, rungs=rungs)


# -- the ladder and the rule ---------------------------------------------------------------


def test_ladder_is_geometric_up_to_the_fine_tune():
    assert Config(method="rungs").resolve().ladder == (0, 1, 3, 20)  # finetune_epochs 20
    cfg = Config.from_dict({"method": "rungs", "rungs": {"eta": 2, "min_epochs": 2,
                                                         "top_epochs": 10}})
    assert cfg.ladder == (0, 2, 4, 10)  # 8 is dropped: the top would be a short step above
    cfg = Config.from_dict({"method": "rungs", "rungs": {"top_epochs": 27}})
    assert cfg.ladder == (0, 1, 3, 9, 27)
    assert Config.from_dict({"method": "rungs", "rungs": {"top_epochs": 1}}).ladder == (0, 1)


@pytest.mark.parametrize("data, key", [
    ({"method": "rungs", "backend": "ray", "ray": {"scheduler": "asha"}}, "ray.scheduler"),
    ({"method": "rungs", "finetunes": 2}, "finetunes"),
    ({"method": "rungs", "distill": {"max_steps": 10}}, "distill"),
    ({"method": "bogus"}, "method"),
    ({"method": "rungs", "rungs": {"eta": 1}}, "rungs.eta"),
    ({"method": "rungs", "rungs": {"promotion": "smallest"}}, "rungs.promotion"),
])
def test_rungs_config_errors_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key):
        Config.from_dict(data)


def test_a_rungs_study_samples_more_students_by_default():
    assert Config(method="rungs").trials > Config().trials


def test_nondominated_ranks_and_crowding():
    # (accuracy up, cost down): 0 and 1 and 3 are on the front, 2 is behind 1, 4 behind 2
    points = [(0.9, 10.0), (0.8, 5.0), (0.7, 6.0), (0.5, 1.0), (0.6, 7.0)]
    assert nondominated_ranks(points) == [0, 0, 1, 0, 2]
    front = [points[i] for i in (0, 1, 3)]
    distances = crowding_distances(front)
    assert math.isinf(distances[0]) and math.isinf(distances[2])
    assert distances[1] == pytest.approx((0.9 - 0.5) / 0.4 + (10.0 - 1.0) / 9.0)
    assert promotion_order(points)[:3] == [0, 3, 1]  # the front: ends first, then by index


def test_next_promotion_takes_the_top_third_of_a_rung():
    # nine students at rung 0 on one cost: accuracies grow with MACs except 4 and 7
    accuracy = [0.1, 0.2, 0.3, 0.4, 0.05, 0.6, 0.7, 0.01, 0.9]
    students = [student(i, (accuracy[i],), 100 * (i + 1)) for i in range(9)]
    kw = {"eta": 3, "top": 2, "objectives": ("accuracy", "macs")}
    first = next_promotion(students, set(), **kw)
    assert first is not None and first.rung == 1
    assert "rung 0: accuracy" in first.reason and "1 of 9 students (the top 3" in first.reason
    taken = {(first.student, first.rung)}
    chosen = [first.student]
    while (nxt := next_promotion(students, taken, **kw)) is not None:
        taken.add((nxt.student, nxt.rung))
        chosen.append(nxt.student)
    assert len(chosen) == 3  # 9 // 3
    assert not {4, 7} & set(chosen)  # dominated students never go up
    assert {0, 8} <= set(chosen)  # the front's ends (cheapest, most accurate) do


def test_without_screening_every_student_goes_on_to_rung_1():
    accuracy = [0.1, 0.2, 0.3, 0.4, 0.05, 0.6, 0.7, 0.01, 0.9]
    students = [student(i, (accuracy[i],), 100 * (i + 1)) for i in range(9)]
    kw = {"eta": 3, "top": 2, "objectives": ("accuracy", "macs"), "screen": False}
    taken: set[tuple[int, int]] = set()
    while (nxt := next_promotion(students, taken, **kw)) is not None:
        assert nxt.rung == 1 and "rung 0 does not screen" in nxt.reason
        taken.add((nxt.student, nxt.rung))
    assert len(taken) == 9  # the dominated 4 and 7 too
    # above rung 0 the ladder keeps its 1/eta: of three students at rung 1, one goes on
    students[:3] = [student(i, (accuracy[i], 0.5 + i / 10), 100 * (i + 1)) for i in range(3)]
    due = next_promotion(students, {(i, 1) for i in range(9)}, **kw)
    assert due is not None and due.rung == 2 and "the top 1 = 1/3 go up" in due.reason


def test_next_promotion_prefers_the_highest_rung():
    students = [student(i, (0.5 + i / 100,), 10 * (i + 1)) for i in range(6)]
    # students 3, 4 and 5 reached rung 1; one of them is due at rung 2 before any new rung-1
    students[3:] = [student(i, (0.5 + i / 100, 0.7 + i / 100), 10 * (i + 1)) for i in (3, 4, 5)]
    taken = {(3, 1), (4, 1), (5, 1)}
    due = next_promotion(students, taken, eta=3, top=2, objectives=("accuracy", "macs"))
    assert due is not None and due.rung == 2


def test_next_promotion_passes_over_a_rung_the_budget_cannot_pay_for():
    # three students at rung 1 (one due to rung 2) and six at rung 0 (two due to rung 1)
    students = [student(i, (0.5 + i / 100, 0.7 + i / 100), 10 + i) for i in range(3)]
    students += [student(i, (0.1 * (i - 2),), 10 * i) for i in range(3, 9)]
    kwargs = dict(eta=3, top=2, objectives=("accuracy", "macs"))
    assert next_promotion(students, set(), **kwargs).rung == 2
    cheap = next_promotion(students, set(), affordable=lambda r, rung: rung < 2, **kwargs)
    assert cheap is not None and cheap.rung == 1
    assert next_promotion(students, set(), affordable=lambda r, rung: False, **kwargs) is None


def test_next_promotion_passes_over_a_student_the_budget_cannot_pay_for():
    # a budget in MAC-passes: of the two due at rung 1 (the top 1/eta of six), the larger
    # is too costly to train, so the other one goes up instead; no student outside the two
    students = [student(i, (0.1 * (i + 1),), 10 * (i + 1)) for i in range(6)]
    kwargs = dict(eta=3, top=2, objectives=("accuracy", "macs"))
    first = next_promotion(students, set(), **kwargs)
    second = next_promotion(students, {(first.student, 1)}, **kwargs)
    big, small = sorted((first.student, second.student), key=lambda n: -students[n].macs)
    assert big != small
    fits = next_promotion(students, set(), **kwargs,
                          affordable=lambda r, rung: r.macs < students[big].macs)
    assert fits is not None and (fits.student, fits.rung) == (small, 1)
    assert next_promotion(students, set(), **kwargs,
                          affordable=lambda r, rung: r.macs < students[small].macs) is None



def test_predicted_gap_extrapolates_a_power_law_in_epochs():
    ladder = (0, 1, 3, 10)
    # a gap to the teacher of c * E**-alpha, observed at 1 and 3 epochs, predicted at 10
    c, alpha, teacher = 0.08, 0.5, 0.92
    rungs = (0.1, teacher - c, teacher - c * 3 ** -alpha)
    assert predicted_gap(rungs, ladder, teacher_accuracy=teacher) == pytest.approx(
        c * 10 ** -alpha)
    # from one trained rung: with the exponent given, else the gap it has
    assert predicted_gap(rungs[:2], ladder, teacher_accuracy=teacher,
                         exponent=alpha) == pytest.approx(c * 10 ** -alpha)
    assert predicted_gap(rungs[:2], ladder, teacher_accuracy=teacher) == pytest.approx(c)
    # no gap closed between the two rungs, or none left: the gap it has
    assert predicted_gap((0.1, 0.8, 0.79), ladder, teacher_accuracy=teacher) == pytest.approx(0.13)
    assert predicted_gap((0.1, 0.9, 0.93), ladder, teacher_accuracy=teacher) == pytest.approx(-0.01)


def test_limit_rule_sends_the_cheapest_student_predicted_within_the_limit_to_the_top():
    ladder, teacher = (0, 1, 3, 10), 0.92
    rule = LimitRule(teacher_accuracy=teacher, floor=teacher - 0.01, ladder=ladder)
    # six students at rung 2 (the rung below the top), MACs growing with the number; the
    # predicted gaps at rung 3: 0: none closed (0.05); 1: 0.0066; 2: 0.0051; 3, 4, 5: < 0.001
    rungs = [(0.1, 0.80, 0.87), (0.1, 0.80, 0.89), (0.1, 0.85, 0.90), (0.1, 0.88, 0.915),
             (0.1, 0.9, 0.916), (0.5, 0.91, 0.918)]
    students = [student(i, r, 100 * (i + 1)) for i, r in enumerate(rungs)]
    kw = {"eta": 3, "top": 3, "objectives": ("accuracy", "macs")}
    assert rule.candidates(students, 2) == [1, 2, 3, 4, 5]
    due = next_promotion(students, set(), limit=rule, **kw)
    assert due is not None and (due.student, due.rung) == (1, 3)
    assert "predicted 0.66 pts below the teacher at rung 3" in due.reason
    # MO-ASHA: a front's end (both ends are infinitely far from their neighbours, and the
    # earlier student goes first), whether or not it can meet the limit
    front = next_promotion(students, set(), **kw)
    assert front is not None and front.student == 0
    # student 1 reached the top 1.4 pts below the teacher, 0.74 pts worse than predicted:
    # that optimism is added to every prediction, which leaves 2 out
    students[1] = student(1, (*rungs[1], 0.906), 200)
    assert rule.margin(students) == pytest.approx(0.014 - 0.0066, abs=1e-4)
    assert rule.candidates(students, 2) == [3, 4, 5]
    assert next_promotion(students, {(1, 3)}, limit=rule, **kw).student == 3
    # once a student at the top meets the limit, only cheaper ones are the pick's candidates
    students[4] = student(4, (*rungs[4], 0.915), 500)
    assert rule.margin(students) == pytest.approx(rule.margin(students[:4]))
    assert rule.candidates(students, 2) == [3]


def test_limit_rule_predicts_from_rung_1_with_the_exponent_students_showed():
    ladder, teacher = (0, 1, 3, 10), 0.92
    rule = LimitRule(teacher_accuracy=teacher, floor=teacher - 0.01, ladder=ladder)
    # three students that reached rung 2 closed their gaps with alpha 0.5, 1 and 2: median 1
    reached = [student(n, (0.1, teacher - 0.06, teacher - 0.06 * 3 ** -a), 1000 + n)
               for n, a in ((0, 0.5), (1, 1.0), (2, 2.0))]
    assert rule.exponent(reached) == pytest.approx(1.0)
    assert rule.exponent(reached[:1]) == pytest.approx(0.5)
    assert rule.exponent([]) is None
    # at rung 1 (six students, the top 2 go up): 3 (gap 0.12: 0.012 at the top) is out,
    # 4 and 5 (0.08, 0.05: 0.008, 0.005) are in, cheapest first; MO-ASHA would send the
    # front's ends, 3 (the cheapest) and 8 (the most accurate) instead
    at_rung_1 = [student(3, (0.1, teacher - 0.12), 10), student(4, (0.1, teacher - 0.08), 20),
                 student(5, (0.1, teacher - 0.05), 30), student(6, (0.1, teacher - 0.2), 40),
                 student(7, (0.1, teacher - 0.3), 50), student(8, (0.1, teacher - 0.01), 60)]
    everyone = reached + at_rung_1
    assert [at_rung_1[i].number for i in rule.candidates(at_rung_1, 1, everyone)] == [4, 5, 8]
    kw = {"eta": 3, "top": 3, "objectives": ("accuracy", "macs")}
    taken = {(n, 1) for n in range(9)} | {(n, 2) for n in range(3)} | {(n, 3) for n in range(3)}
    first = next_promotion(everyone, taken, limit=rule, **kw)
    assert first is not None and (first.student, first.rung) == (4, 2)
    assert next_promotion(everyone, taken | {(4, 2)}, limit=rule, **kw).student == 5
    assert {next_promotion(everyone, taken, **kw).student} <= {3, 8}
    # without a student at rung 2, nothing is known of the exponent: only 8 (0.01) is in
    assert [at_rung_1[i].number for i in rule.candidates(at_rung_1, 1)] == [8]


def test_uniform_ladder_goes_from_the_teacher_to_the_floor():
    space = derive(make_tiny_net(), torch.randn(1, 1, 8, 8), level=1)
    ladder = uniform_ladder(space)
    assert space.largest() not in ladder  # the teacher itself compresses nothing
    below = max(o for o in space.choices[next(iter(space.choices))] if o < 1.0)
    assert all(v == below for n, v in ladder[0].items() if n.startswith("width."))
    widths = [n for n in space.choices if n.startswith("width.")]
    assert all(ladder[-1][n] == min(space.choices[n]) for n in widths)
    assert ladder[-1] == space.smallest()  # down to the space's floor
    deeper = derive(make_tiny_net(), torch.randn(1, 1, 8, 8), level=3)
    assert uniform_ladder(deeper)[-1] == deeper.smallest()
    assert len(ladder) == len({tuple(sorted(a.items())) for a in ladder})  # distinct


# -- the claim protocol ----------------------------------------------------------------------


def test_the_later_of_two_claims_of_one_promotion_gives_way():
    study = optuna.create_study(direction="maximize")
    first = _claim(study, 3, 1)
    assert first is not None
    assert _claim(study, 3, 1) is None  # the same student and rung: lost
    other = _claim(study, 3, 2)
    assert other is not None  # another rung is another promotion
    assert claimed(study.get_trials(deepcopy=False)) == {(3, 1), (3, 2)}
    lost = study.trials[1]
    assert lost.state == TrialState.FAIL and lost.user_attrs[attrs.LOST_CLAIM]
    # a promotion whose process died is claimable again; one that failed with an error is not
    study.tell(first, state=TrialState.FAIL)
    assert claimed(study.get_trials(deepcopy=False)) == {(3, 2)}


# -- a whole study ---------------------------------------------------------------------------


def test_a_rungs_study_promotes_continues_and_picks_at_the_top_rung(tiny_data, tmp_path,
                                                                    monkeypatch):
    from protege import distill

    calls: list[dict] = []
    real = distill.train_student

    def recording(student, *args, **kwargs):
        calls.append({k: kwargs.get(k) for k in ("epochs", "optimizer_state")})
        return real(student, *args, **kwargs)

    monkeypatch.setattr(distill, "train_student", recording)
    out = tmp_path / "run"
    study = open_tiny_study(tiny_data, out, rungs_config())
    assert study.config.ladder == (0, 1, 2)
    study.optimize()
    records = [r for r in study.trials if r.trained]
    assert len(study.trials) == 8 and records
    assert all(r.rungs and r.accuracy == r.rungs[-1] for r in records)
    assert all("to rung 1: rung 0: accuracy" in r.reason for r in records if (r.rung or 0) >= 1)
    top = [r for r in records if r.rung == 2]
    assert top, "no student reached the top rung"
    # every promotion went on from the rung below: one epoch each, with its optimiser state
    # (rung 1 starts from the recalibrated weights, without one)
    assert all(c["epochs"] == 1 for c in calls)
    assert sum(c["optimizer_state"] is not None for c in calls) == len(top)
    promotions = study.rung_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    claims = [tuple(t.user_attrs[attrs.CLAIM]) for t in promotions]
    assert len(claims) == len(set(claims)) == len(calls)  # no student promoted twice
    assert all((out / "rungs" / f"{r.number}-{r.rung}.pt").is_file() for r in records)
    trained_before_pick = len(calls)
    result = study.finish()
    assert len(calls) == trained_before_pick  # the top rung is the fine-tune: no retraining
    pick = result.pick
    assert pick is not None and pick.trial in {r.number for r in top}
    record = next(r for r in top if r.number == pick.trial)
    assert pick.val_accuracy == pytest.approx(record.accuracy)
    assert pick.test_accuracy is not None
    summary = (out / "summary.json").read_text()
    assert '"hypervolume_by_rung"' in summary and '"ladder"' in summary
    # the uniform ladder was enqueued first
    ladder = uniform_ladder(study.space)
    assert [r.arch for r in study.trials[:len(ladder)]] == ladder


def test_a_limit_rule_study_sends_the_cheapest_candidate_to_the_top_rung(tiny_data, tmp_path):
    # any drop allowed: every student at the rung below the top is predicted within the
    # limit, so the first to reach the top is the cheapest there when it went up
    config = rungs_config(constraints={"max_accuracy_drop": 0.99})
    config = Config.from_dict({**config.to_dict(), "n_trials": 12, "rungs": {
        **config.to_dict()["rungs"], "promotion": "limit", "top_epochs": 4}})
    study = open_tiny_study(tiny_data, tmp_path / "run", config)
    assert study.config.ladder == (0, 1, 2, 4)
    study.optimize()
    promotions = sorted(study.rung_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                        key=lambda t: t.number)
    claims = [tuple(t.user_attrs[attrs.CLAIM]) for t in promotions]
    first_top = next(i for i, (_, rung) in enumerate(claims) if rung == 3)
    below = {n for n, rung in claims[:first_top] if rung == 2}
    macs = {r.number: r.macs for r in study.trials}
    chosen = claims[first_top][0]
    assert macs[chosen] == min(macs[n] for n in below)
    assert "predicted within the limit, cheapest first" in promotions[first_top].user_attrs[
        attrs.REASON]
    pick = study.finish().pick
    assert pick is not None and pick.macs <= macs[chosen]


@pytest.mark.slow  # the mid-ladder resume below covers most of it in the default suite
def test_a_resumed_rungs_study_does_no_work_twice(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    study = open_tiny_study(tiny_data, out, rungs_config(n_trials=6))
    study.optimize()
    before = [r.to_dict() for r in study.trials]
    promotions = len(study.rung_study.trials)
    again = open_tiny_study(tiny_data, out, rungs_config(n_trials=6))
    again.optimize()
    assert [r.to_dict() for r in again.trials] == before
    assert len(again.rung_study.trials) == promotions


def test_a_pick_below_the_top_rung_is_trained_on_to_it(tiny_data, tmp_path):
    out = tmp_path / "run"
    study = open_tiny_study(tiny_data, out, rungs_config(n_trials=1, rungs={
        "eta": 2, "min_epochs": 1, "calibration_samples": 64, "warm_start": False}))
    study.optimize()
    (only,) = study.trials
    assert only.rung == 0  # one student: nothing to promote
    pick, _ = study.pick()
    assert pick.trial == only.number
    assert next(r for r in study.trials if r.number == only.number).rung == 2


def test_finetune_by_number_trains_a_student_on_to_the_top_rung(tiny_data, tmp_path):
    out = tmp_path / "run"
    study = open_tiny_study(tiny_data, out, rungs_config(n_trials=4))
    study.optimize()
    low = min((r for r in study.trials if r.trained), key=lambda r: (r.rung, r.number))
    assert low.rung < 2
    folder, student = study.finetune(low.number)
    assert folder == out / f"trial-{low.number}" and (folder / "student.pt").is_file()
    assert next(r for r in study.trials if r.number == low.number).rung == 2
    again, _ = study.finetune(low.number)  # loaded, not trained again
    assert again == folder


def test_the_enqueued_ladder_holds_no_slot_of_the_budget(tiny_data, tmp_path):
    # The uniform ladder is enqueued (WAITING) up front: counted as trials, it held every
    # slot of a budget smaller than itself, and the study ran nothing.
    study = open_tiny_study(tiny_data, tmp_path / "run", rungs_config(n_trials=2))
    assert len(uniform_ladder(study.space)) > 2
    study.optimize()
    assert [r.number for r in study.trials] == [0, 1]
    assert all(r.trained for r in study.trials)


def _brute_force_ranks(points):
    """rank = the length of the longest chain of points dominating it (0: on the front)."""
    from protege.search._pareto import dominates

    memo: dict[int, int] = {}

    def rank(i: int) -> int:
        if i not in memo:
            above = [j for j in range(len(points)) if dominates(points[j], points[i])]
            memo[i] = 1 + max(map(rank, above)) if above else 0
        return memo[i]

    return [rank(i) for i in range(len(points))]


def test_hypervolume_tie_break_puts_a_fronts_knee_before_its_ends():
    # one front, cheapest and least accurate first: crowding puts both ends first, the
    # hypervolume contribution the knee (a big accuracy gain for little cost)
    front = [(0.50, 1.0), (0.90, 2.0), (0.92, 6.0), (0.93, 10.0)]
    assert promotion_order(front)[:2] == [0, 3]
    assert promotion_order(front, tie_break="hypervolume")[0] == 1
    contributions = hypervolume_contributions(front, reference=(0.4, 11.0))
    # brute force: the area only this point dominates
    assert contributions[1] == pytest.approx((0.90 - 0.50) * (6.0 - 2.0))
    assert contributions[3] == pytest.approx((0.93 - 0.92) * (11.0 - 10.0))
    # the rank still comes first: a dominated student never goes before the front
    points = [*front, (0.80, 5.0)]
    assert promotion_order(points, tie_break="hypervolume")[-1] == 4
    with pytest.raises(ValueError, match="tie_break"):
        promotion_order(front, tie_break="knee")


def test_nondominated_ranks_match_a_brute_force_reference():
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(1, 25))
        points = [tuple(map(float, p)) for p in rng.integers(0, 6, size=(n, 3))]
        reference = _brute_force_ranks(points)
        assert nondominated_ranks(points) == reference
        order = promotion_order(points)
        assert sorted(order) == list(range(n))
        assert [reference[i] for i in order] == sorted(reference)


def test_a_study_resumed_mid_ladder_goes_on_from_every_rung(tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = rungs_config(n_trials=8)
    study = open_tiny_study(tiny_data, out, cfg)
    # stop after the first promotion: students are left at rung 0 and rung 1
    study.optimize(callbacks=[lambda s, r: s.stop() if (r.rung or 0) >= 1 else None])
    before = {r.number: r.rungs for r in study.trials if r.trained}
    assert any(len(v) == 2 for v in before.values())
    queued = len(study.optuna_study.get_trials(deepcopy=False))
    again = open_tiny_study(tiny_data, out, cfg)
    assert len(again.optuna_study.get_trials(deepcopy=False)) == queued  # enqueued once
    again.optimize()
    after = {r.number: r.rungs for r in again.trials if r.trained}
    for number, rungs in before.items():  # every rung reached before is kept as it was
        assert after[number][:len(rungs)] == rungs
    assert max(len(v) for v in after.values()) == 3  # and the ladder went on to the top
    ladder = uniform_ladder(again.space)
    archs = [tuple(sorted(r.arch.items())) for r in again.trials]
    assert all(archs.count(tuple(sorted(a.items()))) == 1 for a in ladder)


def test_a_missing_checkpoint_says_the_workers_must_share_the_run_folder(tmp_path):
    from protege.search._rungs import load_checkpoint

    space = derive(make_tiny_net(), torch.randn(1, 1, 8, 8), level=1)
    with pytest.raises(FileNotFoundError, match="share its run folder"):
        load_checkpoint(tmp_path / "rungs" / "3-1.pt", space, space.smallest())
