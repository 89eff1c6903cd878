from __future__ import annotations

import dataclasses
import json

import optuna
import pytest
import torch
from tiny_nets import make_tiny_net

import protege
from protege import distill
from protege.distill import DistillConfig
from protege.search import Config, ConfigError, Constraints, Outcome
from protege.search.pick import bisect

FAST = {"epochs": 1, "finetune_epochs": 1, "batch_size": 64}


def config(**overrides) -> Config:
    data = {"n_trials": 4, "strategy": "random",
            "constraints": {"max_accuracy_drop": 0.5, "max_macs": 0.6}, "distill": FAST}
    data.update(overrides)
    return Config.from_dict(data)


def search(tiny_data, out, cfg, **kwargs):
    return protege.search(make_tiny_net(), train=tiny_data["train"], val=tiny_data["val"],
                          test=tiny_data["test"], example_input=torch.randn(1, 1, 8, 8),
                          config=cfg, out=out, **kwargs)


def open_study(tiny_data, out, cfg):
    return protege.create_study(make_tiny_net(), train=tiny_data["train"],
                                val=tiny_data["val"], test=tiny_data["test"],
                                example_input=torch.randn(1, 1, 8, 8), config=cfg, out=out)


@pytest.fixture
def train_calls(monkeypatch):
    """Counts the distillation runs of trials and of the final fine-tune."""
    calls: list[int] = []
    real = distill.train_student

    def counting(student, *args, **kwargs):
        calls.append(sum(p.numel() for p in student.parameters()))
        return real(student, *args, **kwargs)

    monkeypatch.setattr(distill, "train_student", counting)
    return calls


def test_run_writes_the_run_folder(tiny_data, tmp_path):
    seen = []
    result = search(tiny_data, tmp_path / "run", config(),
                    callbacks=[lambda study, record: seen.append(record)])
    run = tmp_path / "run"
    for name in ("config.yaml", "study.db", "trials.jsonl", "pareto.json", "summary.json",
                 "best/arch.json", "best/student.pt", "report.md", "front.png"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    assert [r["number"] for r in lines] == [0, 1, 2, 3] == [r.number for r in seen]
    for record in lines:
        assert {"number", "outcome", "arch", "accuracy", "macs", "params", "train_seconds",
                "reason"} <= set(record)
        assert record["outcome"] in {kind.value for kind in Outcome}
        stamp = record["provenance"]  # what made it, and on which machine
        assert {"commit", "dirty", "versions", "config_hash", "machine"} <= set(stamp)
        assert stamp["versions"]["torch"] and stamp["machine"]["cores"]
    front = json.loads((run / "pareto.json").read_text())
    assert front and all({"trial", "arch", "accuracy", "macs", "params"} <= set(m) for m in front)
    assert [m["trial"] for m in front] == [r.number for r in result.front]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["provenance"]["config_hash"] == lines[0]["provenance"]["config_hash"]
    assert summary["teacher"]["val_accuracy"] == 1.0
    assert summary["pick"]["trial"] == result.pick.trial
    assert summary["pick"]["test_accuracy"] is not None
    assert summary["pick"]["macs"] <= 0.6 * summary["teacher"]["macs"]


def test_saved_student_rebuilds_with_identical_outputs(tiny_data, tmp_path):
    result = search(tiny_data, tmp_path / "run", config(n_trials=3))
    student = protege.load_student(make_tiny_net(), tmp_path / "run/best/arch.json",
                                   tmp_path / "run/best/student.pt")
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(student(x), result.student(x), rtol=0, atol=0)


def test_student_over_the_mac_limit_never_trains(tiny_data, tmp_path, train_calls):
    limits = {"max_accuracy_drop": 0.5, "max_macs": 0.3}
    result = search(tiny_data, tmp_path / "run", config(n_trials=8, constraints=limits))
    rejected = [r for r in result.trials if r.outcome == Outcome.REJECTED]
    trained = [r for r in result.trials if r.outcome == Outcome.TRAINED]
    assert rejected, "the MAC limit should reject some random students"
    for record in rejected:
        assert record.reason.startswith("macs ")
        assert record.accuracy is None and record.train_seconds is None
    # One distillation per trained trial, plus the pick's fine-tune; none for rejected ones.
    assert len(train_calls) == len(trained) + 1


def test_resume_keeps_finished_trials(tiny_data, tmp_path, train_calls):
    out = tmp_path / "run"
    first = search(tiny_data, out, config(n_trials=3))
    calls_before = len(train_calls)
    second = search(tiny_data, out, config(n_trials=5))
    assert [r.to_dict() for r in second.trials[:3]] == [r.to_dict() for r in first.trials]
    assert len(second.trials) == 5
    new_trainings = len(train_calls) - calls_before
    assert new_trainings <= 2 + 1  # at most the two new trials and one fine-tune
    storage = optuna.load_study(study_name="protege", storage=f"sqlite:///{out / 'study.db'}")
    assert len(storage.trials) == 5


def test_impossible_mac_limit_is_a_clear_error_before_any_trial(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="no student can meet the limits"):
        search(tiny_data, tmp_path / "run", config(constraints={"max_macs": 0.001}))
    assert not (tmp_path / "run" / "study.db").exists()


def test_public_api_runs_a_search(tiny_data, tmp_path):
    result = protege.search(
        make_tiny_net(), train=tiny_data["train"], val=tiny_data["val"],
        example_input=torch.randn(1, 1, 8, 8), out=tmp_path / "api",
        config=protege.Config(n_trials=2, strategy="tpe",
                              constraints=Constraints(max_accuracy_drop=0.5),
                              distill=DistillConfig(**FAST)),
    )
    assert len(result.trials) == 2 and result.pick is not None
    assert result.pick.test_accuracy is None  # no test data given


def test_a_study_is_stopped_by_a_callback_and_extended(tiny_data, tmp_path):
    study = open_study(tiny_data, tmp_path / "run", config(n_trials=10))
    study.optimize(callbacks=[lambda study, record: study.stop() if record.number == 1 else None])
    assert [r.number for r in study.trials] == [0, 1]
    study.optimize(n_trials=2)  # two more, whatever the config's budget
    assert [r.number for r in study.trials] == [0, 1, 2, 3]
    assert study.front and study.hypervolume > 0
    result = study.finish()
    assert result.pick is not None and (tmp_path / "run" / "best" / "student.pt").is_file()


def test_a_resumed_study_does_not_replay_its_sampler(tiny_data, tmp_path):
    cfg = config(n_trials=2, constraints={"max_accuracy_drop": 0.5},
                 rules={"gain": False, "predictor": False, "curve": False})
    first = open_study(tiny_data, tmp_path / "run", cfg)
    first.optimize()
    resumed = open_study(tiny_data, tmp_path / "run", config(
        n_trials=4, constraints={"max_accuracy_drop": 0.5},
        rules={"gain": False, "predictor": False, "curve": False}))
    resumed.optimize()
    records = resumed.trials
    assert len(records) == 4
    # a sampler restarted from the same seed would propose trials 0 and 1 again
    assert [r.arch for r in records[2:]] != [r.arch for r in records[:2]]
    assert all(r.duplicate_of is None for r in records[2:])


def test_level_presets_resolve_alike_however_the_config_is_built():
    built = Config(level=3).resolve()
    read = Config.from_dict({"level": 3}).resolve()
    assert built == read
    assert built.distill.epochs == 6 and built.n_trials == 80
    assert built.resolve() == built
    with pytest.raises(TypeError):
        Config(3)  # type: ignore[misc]  # keyword-only


def test_non_module_teacher_is_rejected(tiny_data, tmp_path):
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        protege.search(object(), train=tiny_data["train"], val=tiny_data["val"],  # type: ignore
                   example_input=torch.randn(1, 1, 8, 8), config=config(), out=tmp_path)


@pytest.mark.parametrize("level", [2, 3])
def test_deeper_levels_search_and_rebuild(tiny_data, tmp_path, level):
    cfg = config(n_trials=3, level=level, constraints={"max_accuracy_drop": 0.5},
                 space={"options": {"width.*": [0.5, 1.0]}})
    result = search(tiny_data, tmp_path / "run", cfg)
    kinds = {name.split(".")[0] for name in result.trials[0].arch}
    assert kinds >= ({"width", "depth", "rank"} if level == 3 else {"width", "depth"})
    assert all(value in (0.5, 1.0) for name, value in result.trials[0].arch.items()
               if name.startswith("width."))
    student = protege.load_student(make_tiny_net(), tmp_path / "run/best/arch.json",
                                   tmp_path / "run/best/student.pt")
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(student(x), result.student(x), rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_latency_as_objective_and_limit(tiny_data, tmp_path, precision, monkeypatch):
    pytest.importorskip("onnxruntime")
    import importlib

    study_module = importlib.import_module("protege.search._study")
    seen = []

    def recorded(model, example_input, **settings):
        seen.append(settings["precision"])
        return measure(model, example_input, **settings)

    measure = study_module.measure_latency
    monkeypatch.setattr(study_module, "measure_latency", recorded)
    cfg = config(n_trials=3, objectives=["accuracy", "latency"],
                 constraints={"max_accuracy_drop": 0.5, "max_latency_ms": 1000.0},
                 latency={"precision": precision})
    result = search(tiny_data, tmp_path / "run", cfg)
    # the pick is timed as the teacher and the front are: on latency:'s precision
    assert seen and set(seen) == {precision}
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in result.trials)
    assert result.teacher.latency_ms is not None and result.teacher.latency_ms > 0
    assert result.teacher.latency_predicted_ms is not None  # the scale of the students'
    assert result.teacher.latency_predicted_ms > 0
    front = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert front and all(m["latency_ms_predicted"] > 0 and m["latency_ms_measured"] > 0
                         for m in front)
    assert all((m["latency_runtime"], m["latency_precision"], m["latency_batch"],
                m["latency_threads"]) == ("onnxruntime", precision, 1, 1)
               and m["latency_machine"] and m["latency_repeatability"] >= 0 for m in front)


def test_impossible_latency_limit_is_a_clear_error(tiny_data, tmp_path):
    cfg = config(constraints={"max_latency_ms": 1e-6})
    with pytest.raises(ValueError, match="no student can meet the limits.*latency"):
        search(tiny_data, tmp_path / "run", cfg)


def test_feasibility_predicts_latency_from_the_architecture(tiny_net):
    """The smallest student's latency comes from ``predict(arch)``, as every trial's:
    no export and no profiling of a built model before the search starts."""
    from protege.search._profile import check_feasible
    from protege.search._trial import Limits
    from protege.spaces import derive

    class Predictor:
        def predict(self, arch):
            return 5.0

        def predict_model(self, model):
            pytest.fail("the smallest student was exported and profiled")

    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="5 ms predicted latency"):
        check_feasible(derive(tiny_net, x), x, Limits(max_latency_ms=1.0), Predictor(),
                       teacher_macs=1, teacher_params=1)


def _fake_tune(finetuned_accuracy, floor, calls):
    """A fine-tune that returns a fixed accuracy per trial and records the order."""
    from protege.search import Pick

    def tune(record):
        calls.append(record.number)
        acc = finetuned_accuracy[record.number]
        pick = Pick(trial=record.number, arch={}, macs=record.macs, params=0,
                    search_accuracy=record.accuracy, val_accuracy=acc, test_accuracy=None,
                    meets_constraints=acc >= floor, finetune_seconds=1.0)
        return pick, torch.nn.Identity()

    return tune


def _records(*points):
    from protege.search import TrialRecord

    return [TrialRecord(number=i, outcome=Outcome.TRAINED, arch={}, accuracy=a, macs=m)
            for i, (a, m) in enumerate(points)]


# trial: (brief accuracy, MACs). Trials 0-6 form the front; 7 is dominated by 2.
FRONT = _records((0.60, 10), (0.65, 20), (0.70, 30), (0.74, 40), (0.78, 50), (0.80, 60),
                 (0.85, 70), (0.62, 35))
# after fine-tuning every student gains 0.14: trials 3 (0.88) and up meet a 0.88 floor
TUNED = {r.number: round(r.accuracy + 0.14, 4) for r in FRONT}


def test_bisection_finds_the_smallest_student_that_meets_the_limit_after_fine_tuning():
    calls = []
    pick, _ = bisect(FRONT[6], FRONT, tune=_fake_tune(TUNED, 0.88, calls),
                                   finetunes=4)
    # trial 6 first, then the front below it: 0..5 -> mid 3 (meets), 0..3 -> 1 (misses),
    # 2..3 -> 2 (misses): trial 3 is the smallest that meets, found in 4 fine-tunes
    assert calls == [6, 3, 1, 2]
    assert pick.trial == 3 and pick.meets_constraints
    assert [f["trial"] for f in pick.finetuned] == calls
    assert [f["meets"] for f in pick.finetuned] == [True, True, False, False]


def test_bisection_goes_up_by_macs_when_the_first_student_misses_after_fine_tuning():
    calls = []
    pick, _ = bisect(FRONT[2], FRONT, tune=_fake_tune(TUNED, 0.88, calls),
                                   finetunes=4)
    # trial 2 misses (0.84); above it, by MACs, every larger student (dominated trial 7
    # too): [7, 3, 4, 5, 6] -> trial 4 (meets), trial 3 (meets), trial 7 (misses)
    assert calls == [2, 4, 3, 7] and pick.trial == 3 and pick.meets_constraints
    calls.clear()
    pick, _ = bisect(FRONT[2], FRONT, tune=_fake_tune(TUNED, 0.88, calls),
                                   finetunes=2)
    assert calls == [2, 4] and pick.trial == 4  # the smallest that met so far
    calls.clear()
    pick, _ = bisect(FRONT[2], FRONT, tune=_fake_tune(TUNED, 0.995, calls),
                                   finetunes=3)
    # nothing meets 0.995: the most accurate fine-tuned student is returned, marked so
    assert calls == [2, 4, 6] and pick.trial == 6 and not pick.meets_constraints


def test_bisection_stops_at_its_fine_tune_budget_and_when_the_first_misses():
    calls = []
    pick, _ = bisect(FRONT[6], FRONT, tune=_fake_tune(TUNED, 0.88, calls),
                                   finetunes=2)
    assert calls == [6, 3] and pick.trial == 3
    calls.clear()
    pick, _ = bisect(FRONT[6], FRONT, tune=_fake_tune(TUNED, 0.995, calls),
                                   finetunes=4)
    assert calls == [6] and pick.trial == 6 and not pick.meets_constraints
    calls.clear()
    pick, _ = bisect(FRONT[6], FRONT, tune=_fake_tune(TUNED, 0.88, calls),
                                   finetunes=1)
    assert calls == [6] and len(pick.finetuned) == 1


def test_front_fine_tunes_spread_over_the_front_cheaper_than_the_pick():
    from protege.search.pick import spread_front

    # MACs 10..70 on the front (trial 7 dominated); [20, 70): trials 1-5
    assert [r.number for r in spread_front(FRONT, k=2, low=20, high=70)] == [1, 5]
    # targets evenly spaced in log-MACs over 20..60: 20, 34.6 (nearer 30 than 40), 60
    assert [r.number for r in spread_front(FRONT, k=3, low=20, high=70)] == [1, 2, 5]
    assert [r.number for r in spread_front(FRONT, k=4, low=15, high=65)] == [1, 2, 3, 5]
    assert [r.number for r in spread_front(FRONT, k=9, low=0, high=40)] == [0, 1, 2]
    assert spread_front(FRONT, k=0, low=0, high=100) == []
    assert [r.number for r in spread_front(FRONT, k=1, low=0, high=100)] == [0]  # cheapest
    assert 7 not in {r.number for r in spread_front(FRONT, k=8, low=0, high=100)}


def test_predicted_latencies_are_scaled_by_the_teachers_predicted_latency():
    """A latency hypervolume divides each student's predicted latency by the same
    predictor's figure for the teacher, not by the teacher's measurement: a predictor that
    reads 2x low would otherwise halve every ratio."""
    from protege.search import TeacherProfile, TrialRecord
    from protege.search._pareto import scaled_hypervolume
    from protege.search._study import front_hypervolume

    teacher = TeacherProfile(macs=100, params=10, val_accuracy=0.9, classes=10,
                             latency_ms=2.0, latency_predicted_ms=1.0)
    assert teacher.costs()["latency"] == 1.0
    assert dataclasses.replace(teacher, latency_predicted_ms=None).costs()["latency"] == 2.0
    record = TrialRecord(number=0, outcome=Outcome.TRAINED, arch={}, accuracy=0.5, macs=50,
                         params=5, latency_ms=0.5)
    volume = front_hypervolume([record], teacher, ["accuracy", "latency"])
    assert volume == pytest.approx(scaled_hypervolume(
        [(0.5, {"latency": 0.5})], teacher_costs={"latency": 1.0}, chance=0.1))
    assert volume != pytest.approx(scaled_hypervolume(
        [(0.5, {"latency": 0.5})], teacher_costs={"latency": 2.0}, chance=0.1))


def test_a_latency_search_picks_the_fastest_student_within_the_limit():
    """objectives [accuracy, latency]: the pick minimises the predicted latency, not MACs."""
    from protege.search import TrialRecord
    from protege.search.pick import choose, pick_cost

    assert pick_cost(("accuracy", "latency")) == "latency"
    assert pick_cost(("accuracy", "params", "latency")) == "params"
    assert pick_cost(("accuracy", "macs")) == "macs"
    # trial: (accuracy, MACs, predicted ms); fewer MACs is not faster here
    records = [TrialRecord(number=i, outcome=Outcome.TRAINED, arch={}, accuracy=a, macs=m,
                           latency_ms=ms)
               for i, (a, m, ms) in enumerate([(0.90, 10, 0.9), (0.91, 40, 0.3),
                                               (0.92, 20, 0.5), (0.80, 5, 0.1)])]
    assert choose(records, floor=0.85) == (records[0], True)
    assert choose(records, floor=0.85, cost="latency") == (records[1], True)
    # nothing within the limit: the most accurate, and among equals the fastest
    tied = [dataclasses.replace(r, accuracy=0.80) for r in records]
    assert choose(tied, floor=0.95, cost="latency") == (tied[3], False)
    assert choose(tied[:3], floor=0.95, cost="latency") == (tied[1], False)
    assert choose(tied[:3], floor=0.95) == (tied[0], False)
    # below_best: nothing within the limit, so the cheapest within 0.015 of the most accurate
    assert choose(records, floor=0.95) == (records[2], False)
    assert choose(records, floor=0.95, below_best=0.015) == (records[2], False)  # 0.92, 20
    assert choose(records, floor=0.95, below_best=0.015, cost="latency") == (records[1], False)
    assert choose(records, floor=0.95, below_best=0.02) == (records[0], False)  # 0.90, 10
    assert choose(records, floor=0.95, below_best=0.0) == (records[2], False)
    assert choose(records, floor=0.85, below_best=0.5) == (records[0], True)  # met: unchanged
    # the bisection walks the (accuracy, latency) front: latency follows FRONT's MACs
    # and MACs run the other way, so the fine-tunes are those of the MACs test above
    by_latency = [dataclasses.replace(r, macs=1000 - (r.macs or 0), latency_ms=r.macs)
                  for r in FRONT]
    calls = []
    pick, _ = bisect(by_latency[6], by_latency, tune=_fake_tune(TUNED, 0.88, calls),
                     finetunes=4, cost="latency")
    assert calls == [6, 3, 1, 2] and pick.trial == 3 and pick.meets_constraints


def test_finetunes_runs_a_search_that_fine_tunes_several_students(tiny_data, tmp_path,
                                                                   train_calls, monkeypatch):
    # as if no trial met the limit: the largest student is fine-tuned first
    from protege.search import _study as study_module

    monkeypatch.setattr(study_module, "choose",  # the pick's policy, replaced here
                        lambda done, floor, cost, below_best=None:
                        (max(done, key=lambda r: r.macs), False))
    cfg = config(finetunes=3, n_trials=6, constraints={"max_accuracy_drop": 0.99})
    result = search(tiny_data, tmp_path / "run", cfg)
    tried = result.pick.finetuned
    assert tried[0]["macs"] == max(r.macs for r in result.trials if r.macs)
    # every fine-tuned student meets a 0.99 drop: the bisection goes down the front (it
    # stops early once no smaller front member is left)
    assert all(f["meets"] for f in tried) and 2 <= len(tried) <= 3
    trained = sum(r.outcome == Outcome.TRAINED for r in result.trials)  # rules may skip some
    assert len(train_calls) == trained + len(tried)
    assert result.pick.trial == tried[-1]["trial"] and result.pick.meets_constraints
    assert result.pick.macs == min(f["macs"] for f in tried)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [f["trial"] for f in summary["pick"]["finetuned"]] == [f["trial"] for f in tried]
    assert "students were fine-tuned to choose it" in (tmp_path / "run" / "report.md").read_text()
    with pytest.raises(ConfigError, match="finetunes"):
        config(finetunes=0)


def test_the_pick_s_rule_on_plain_rows_and_on_records_in_any_order():
    """cheapest_within is choose's rule for rows that are not trial records (the peer's
    sweep); choose breaks ties by trial number, not by the order it is given."""
    from protege.search import TrialRecord
    from protege.search.pick import cheapest_within, choose

    rows = [(0.90, 30), (0.95, 20), (0.95, 20), (0.80, 5)]  # (accuracy, MACs)
    rule = {"accuracy": lambda r: r[0], "cost": lambda r: (r[1],)}
    assert cheapest_within(rows, floor=0.85, **rule) == (rows[1], True)
    assert cheapest_within(range(4), floor=0.85, accuracy=lambda i: rows[i][0],
                           cost=lambda i: (rows[i][1],)) == (1, True)  # ties: the first
    assert cheapest_within(range(4), floor=0.99, accuracy=lambda i: rows[i][0],
                           cost=lambda i: (rows[i][1],)) == (1, False)  # the most accurate
    assert cheapest_within([], floor=0.5, **rule) is None
    from protege.search import Config
    from protege.search.pick import accuracy_floor

    cfg = Config.from_dict({"constraints": {"max_accuracy_drop": 0.25}})
    assert accuracy_floor(1, cfg) == accuracy_floor(1.0, cfg) == pytest.approx(0.75)  # the peer's
    records = [TrialRecord(number=n, outcome=Outcome.TRAINED, arch={}, accuracy=0.9, macs=10)
               for n in (3, 1, 2)]
    assert choose(records, floor=0.85) == (records[1], True)
    assert choose(records, floor=0.95) == (records[1], False)
