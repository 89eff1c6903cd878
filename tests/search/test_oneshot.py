"""method: oneshot: the supernet trained once per run folder, students scored as its slices,
the pick fine-tuned from its supernet weights."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from tiny_nets import make_tiny_net, open_tiny_study, tiny_config

import protege
from protege.search import Config, ConfigError
from protege.search._oneshot import SUPERNET_FILE, _claim
from protege.search._rungs import uniform_ladder


def oneshot_config(**overrides) -> Config:
    return tiny_config({"method": "oneshot", "n_trials": 6,
                        "oneshot": {"epochs": 1, "calibration_samples": 64}}, **overrides)


def test_oneshot_config_defaults_and_errors():
    cfg = Config(method="oneshot").resolve()
    assert cfg.strategy == "nsga2" and cfg.n_trials == 300  # hundreds of cheap students
    assert Config().resolve().strategy == "tpe"
    assert cfg.supernet_epochs == cfg.distill.finetune_epochs
    assert cfg.front_epochs == cfg.distill.finetune_epochs and cfg.oneshot.finetune_front == 0
    assert Config.from_dict({"method": "oneshot",
                             "oneshot": {"front_epochs": 3}}).front_epochs == 3
    assert Config.from_dict({"method": "oneshot", "backend": "ray"}).backend == "ray"
    with pytest.raises(ConfigError, match="init"):
        Config.from_dict({"method": "oneshot", "init": "scratch"})
    with pytest.raises(ConfigError, match="oneshot.students"):
        Config.from_dict({"method": "oneshot", "oneshot": {"students": -1}})


def test_a_oneshot_study_scores_slices_and_fine_tunes_from_the_supernet(tiny_data, tmp_path):
    teacher = make_tiny_net()
    study = open_tiny_study(tiny_data, tmp_path, oneshot_config(level=3, n_trials=9),
                            teacher=teacher)
    study.optimize()
    assert (tmp_path / SUPERNET_FILE).is_file()
    facts = study.supernet
    assert facts is not None and facts["epochs"] == 1
    assert facts["ranks"] is False and facts["rank_choices"] == 4  # level 3, full rank
    assert facts["sample_passes"] == 192 * 4
    # students are cut from the trained supernet, not from the teacher
    assert study.space.teacher is not teacher
    trained = [r for r in study.trials if r.trained]
    assert len(study.trials) == 9 and trained
    # the uniform ladder (the students uniform pruning gives) is scored first
    ladder = uniform_ladder(study.space)
    assert 1 < len(ladder) < 9
    assert [r.arch for r in study.trials[:len(ladder)]] == ladder
    assert all(r.rungs == (r.accuracy,) and not r.history
               for r in trained if r.duplicate_of is None)
    result = study.finish()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["supernet"]["history"] and summary["pick"] is not None
    assert result.pick is not None
    report = (tmp_path / "report.md").read_text()
    assert "## Supernet" in report and "every student at full rank" in report


def test_with_no_slice_within_the_limit_the_pick_is_the_cheapest_near_the_best(
        tiny_data, tmp_path, monkeypatch):
    from protege.search import Study

    def tuned_by_pick(relative: bool) -> tuple[list[int], list]:
        cfg = oneshot_config(n_trials=5, constraints={"max_accuracy_drop": 0.05},
                             oneshot={"epochs": 1, "calibration_samples": 64,
                                      "relative_limit": relative})
        study = open_tiny_study(tiny_data, tmp_path, cfg)  # the second run resumes the first
        study.optimize()
        # slice scores that grow with the MACs, no slice within 5 points of the teacher
        done = sorted((r for r in study.trials if r.trained), key=lambda r: (r.macs, r.number))
        scored = [dataclasses.replace(r, accuracy=0.5 + 0.02 * i) for i, r in enumerate(done)]
        monkeypatch.setattr(Study, "trials", property(lambda self: scored))
        study.profile = dataclasses.replace(study.profile, val_accuracy=0.99)
        tuned: list[int] = []
        tune = study._tune
        study._tune = lambda record: tuned.append(record.number) or tune(record)
        study.pick()
        monkeypatch.undo()
        return tuned, scored

    tuned, scored = tuned_by_pick(True)
    assert len(scored) >= 4 and scored[-1].accuracy < 0.94
    # the cheapest within 5 points of the best (0.02 a step: three steps below it)
    assert tuned == [scored[-3].number]
    assert tuned_by_pick(False)[0] == [scored[-1].number]  # the most accurate slice


def test_front_members_cheaper_than_the_pick_are_fine_tuned_from_the_supernet(
        tiny_data, tmp_path, monkeypatch):
    from protege.search import Study

    cfg = oneshot_config(n_trials=8, constraints={"max_accuracy_drop": 0.05},
                         oneshot={"epochs": 1, "calibration_samples": 64,
                                  "finetune_front": 2, "front_epochs": 1})
    study = open_tiny_study(tiny_data, tmp_path, cfg)
    study.optimize()
    # slice scores that grow with the MACs, none within 5 points of the teacher
    done = sorted((r for r in study.trials if r.trained), key=lambda r: (r.macs, r.number))
    scored = [dataclasses.replace(r, accuracy=0.5 + 0.02 * i) for i, r in enumerate(done)]
    monkeypatch.setattr(Study, "trials", property(lambda self: scored))
    study.profile = dataclasses.replace(study.profile, val_accuracy=0.99)
    # the front's fine-tunes (given their epochs) end at `reach`; the pick's really trains
    reach = {"front": 0.90}
    tune = study._tune

    def faked(record, *, test=False, epochs=None):
        pick, module = tune(record, test=test, epochs=epochs)
        if epochs is None:
            return pick, module
        return dataclasses.replace(pick, val_accuracy=reach["front"],
                                   meets_constraints=reach["front"] >= 0.94), module

    study._tune = faked
    pick, _ = study.pick()
    first = scored[-3].number  # the relative limit's pick, fine-tuned first
    assert pick.trial == first and pick.finetuned[0]["trial"] == first
    front = [f for f in pick.finetuned if f.get("front")]
    smallest = study.supernet["macs"]["smallest"]
    cheaper = [r for r in scored if smallest <= r.macs < pick.macs]
    assert len(cheaper) >= 3  # so that two of them are chosen
    assert len(front) == 2 and all(f["epochs"] == 1 and not f["meets"] for f in front)
    assert [f["trial"] for f in front] == [cheaper[0].number, cheaper[-1].number]
    assert all((tmp_path / f"trial-{f['trial']}" / "student.pt").is_file() for f in front)
    assert all(f["search_accuracy"] == next(r.accuracy for r in scored if r.number == f["trial"])
               for f in front)
    # a front member that meets the limit after its fine-tune is cheaper than the pick: the
    # cheapest such one is the pick, measured on test, saved in best/
    reach["front"] = 0.97
    result = study.finish()
    assert result.pick is not None and result.pick.trial == cheaper[0].number
    assert result.pick.meets_constraints and result.pick.val_accuracy == 0.97
    assert result.pick.test_accuracy is not None
    assert [f["trial"] for f in result.pick.finetuned] == [first] + [f["trial"] for f in front]
    assert json.loads((tmp_path / "best" / "arch.json").read_text())["arch"] == \
        cheaper[0].arch
    assert "2 members of the front cheaper than the pick were fine-tuned too" in (
        tmp_path / "report.md").read_text()
    # pareto.json says which front members were fine-tuned, to what, and where they are
    members = {m["trial"]: m for m in json.loads((tmp_path / "pareto.json").read_text())}
    tuned = {f["trial"]: f for f in result.pick.finetuned}
    assert set(tuned) <= set(members)
    assert all(members[n]["finetuned_val_accuracy"] == f["val_accuracy"] for n, f in tuned.items())
    assert members[result.pick.trial]["saved_in"] == "best"
    assert members[front[1]["trial"]]["saved_in"] == f"trial-{front[1]['trial']}"
    assert members[first]["saved_in"] is None  # fine-tuned, no longer the pick: not kept
    assert all("saved_in" not in m for n, m in members.items() if n not in tuned)


def test_the_report_says_how_a_supernet_trained_its_rank_choices():
    from protege.search.report._report import _rank_training

    assert Config.from_dict({"method": "oneshot", "oneshot": {"ranks": True}}).oneshot.ranks
    assert not Config(method="oneshot").oneshot.ranks  # full rank by default (measured)
    assert Config(method="oneshot").warm_start and Config(method="rungs").warm_start
    assert not Config.from_dict({"method": "oneshot", "oneshot": {"warm_start": False}}).warm_start
    assert not Config(method="trials").warm_start
    assert Config(method="oneshot").oneshot.relative_limit
    assert _rank_training({"ranks": True, "rank_choices": 4}) == (
        ", its 4 rank choices trained as projections")
    assert "every student at full rank" in _rank_training({"ranks": False, "rank_choices": 4})
    assert _rank_training({"ranks": False, "rank_choices": 0}) == ""  # no rank choice: silent
    assert _rank_training({"ranks": False}) == ""  # supernet.json from before rank_choices


def test_a_resumed_oneshot_study_does_not_train_the_supernet_again(tiny_data, tmp_path,
                                                                     monkeypatch):
    study = open_tiny_study(tiny_data, tmp_path, oneshot_config(n_trials=3))
    study.optimize()
    stamp = os.stat(tmp_path / SUPERNET_FILE).st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("the supernet was trained again")

    monkeypatch.setattr(protege.distill, "train_supernet", refuse)
    again = open_tiny_study(tiny_data, tmp_path, oneshot_config(n_trials=5))
    again.optimize()
    assert len(again.trials) == 5
    ladder = uniform_ladder(again.space)  # enqueued once, by the first run
    assert len(ladder) > 5 and [r.arch for r in again.trials] == ladder[:5]
    assert len(again.optuna_study.get_trials(deepcopy=False)) == len(ladder)
    assert os.stat(tmp_path / SUPERNET_FILE).st_mtime_ns == stamp
    assert again.supernet == study.supernet


def test_a_dead_process_s_supernet_lock_is_taken_over(tmp_path):
    lock = tmp_path / "supernet.lock"
    lock.write_text(f"{os.uname().nodename}:999999999")  # no such process
    assert _claim(lock)
    assert lock.read_text().endswith(f":{os.getpid()}")
    assert not _claim(lock)  # held by a live process (this one)
