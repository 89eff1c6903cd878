"""Worker processes sharing one study (``protege worker`` beside one ``protege run``):
exactly ``n_trials`` finished records, no duplicate numbers, no result lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from protege.experiments import load_task
from protege.search import _attrs as attrs
from protege.search._storage import open_storage

CONFIG = """
task: digits
strategy: random
constraints: {max_accuracy_drop: 0.5}
rules: {predictor: false}
distill: {epochs: 1, finetune_epochs: 1, batch_size: 128}
"""


def _run_workers(tmp_path: Path, *, storage: str, n_trials: int, workers: int,
                 config: str = CONFIG) -> Path:
    """One ``protege run`` (the owner) and ``workers - 1`` ``protege worker`` processes."""
    _ = load_task("digits").teacher  # cached once, so no process trains it
    cfg = tmp_path / "c.yaml"
    cfg.write_text(config)
    out = tmp_path / "run"
    common = [str(cfg), "--out", str(out), "--storage", storage, "--set", f"n_trials={n_trials}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # -v: a failing process prints its traceback (a worker once failed with a bare
    # AssertionError under load, and -q hid where)
    protege = [sys.executable, "-m", "protege.cli", "-v"]
    procs = [subprocess.Popen([*protege, "worker", *common], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(workers - 1)]
    procs.append(subprocess.Popen([*protege, "run", *common], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
    for proc in procs:
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
    return out


def _check_study(out: Path, storage: str, n_trials: int) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="protege", storage=open_storage(storage, out))
    trials = [t for t in study.get_trials() if not t.user_attrs.get(attrs.BUDGET_SPENT)]
    done = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                             optuna.trial.TrialState.PRUNED)]
    assert len(done) == n_trials
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    for trial in done:  # every result is whole
        assert trial.user_attrs["arch"] and trial.user_attrs["macs"] > 0
        assert trial.user_attrs[attrs.WORKER]
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert len(trial.values) == 2 and 0.0 <= trial.values[0] <= 1.0
        else:
            assert trial.user_attrs[attrs.REASON]
        assert trial.user_attrs[attrs.OUTCOME] in ("trained", "reused", "rejected", "skipped",
                                                   "stopped")
    for trial in trials:
        if trial.state == optuna.trial.TrialState.FAIL:
            assert trial.user_attrs.get(attrs.REASON)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    # The owner's trials.jsonl and pick cover the whole study, whoever ran each trial.
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert [r["number"] for r in records] == numbers
    assert sum(r["outcome"] not in ("failed", "running") for r in records) == n_trials
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pick"]["trial"] in {t.number for t in done}
    return done


def test_four_workers_on_postgresql_finish_exactly_forty_trials(tmp_path, postgres_url):
    out = _run_workers(tmp_path, storage=postgres_url, n_trials=40, workers=4)
    done = _check_study(out, postgres_url, 40)
    assert len({t.user_attrs[attrs.WORKER] for t in done}) >= 2  # they really shared it


@pytest.mark.parametrize("kind", ["journal", pytest.param("sqlite", marks=pytest.mark.slow)])
def test_two_workers_on_one_file_storage_finish_exactly_n_trials(kind, tmp_path):
    run = tmp_path / "run"
    storage = {"journal": f"journal:{run / 'study.journal'}",
               "sqlite": f"sqlite:///{run / 'study.db'}"}[kind]
    out = _run_workers(tmp_path, storage=storage, n_trials=8, workers=2)
    _check_study(out, storage, 8)


@pytest.mark.slow  # about a minute on 2 quiet cores; the claim protocol has a fast unit test
def test_workers_share_the_rungs_and_promote_no_student_twice(tmp_path):
    """method: rungs: any worker promotes any student through the promotions' study."""
    run = tmp_path / "run"
    storage = f"journal:{run / 'study.journal'}"
    config = CONFIG + "method: rungs\nrungs: {eta: 2, min_epochs: 1, top_epochs: 2}\n"
    out = _run_workers(tmp_path, storage=storage, n_trials=12, workers=2, config=config)
    _check_study(out, storage, 12)
    rungs = optuna.load_study(study_name=attrs.RUNGS_STUDY_NAME,
                              storage=open_storage(storage, out))
    done = [t for t in rungs.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    claims = [tuple(t.user_attrs[attrs.CLAIM]) for t in done]
    assert claims and len(claims) == len(set(claims))  # no student promoted twice
    assert {rung for _, rung in claims} == {1, 2}  # every rung of the ladder was reached
    for student, rung in claims:  # each went on from its own rung below
        assert rung == 1 or (student, rung - 1) in claims
        assert (out / "rungs" / f"{student}-{rung}.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["pick"]["trial"], 2) in claims  # picked at the top rung
    assert summary["ladder"] == [0, 1, 2]


def test_a_trial_another_worker_has_not_told_yet_is_still_running():
    """A worker stores a trial's outcome just before it tells the study. Another worker
    reading the storage in between once took the trial as trained, reused its student
    with no accuracy and died on an assertion (four workers on PostgreSQL, under load)."""
    from protege.search._records import Outcome, record_of
    from protege.search._trial import finished_records

    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    trial.set_user_attr(attrs.ARCH, {"width.a": 0.5})
    trial.set_user_attr(attrs.OUTCOME, Outcome.TRAINED.value)  # written, not yet told
    told_not = study.get_trials(deepcopy=False)
    assert record_of(told_not[0]).outcome == Outcome.RUNNING
    assert finished_records(told_not, before=1) == []
    study.tell(trial, [0.9, 100.0])
    done = finished_records(study.get_trials(deepcopy=False), before=1)
    assert [(r.outcome, r.accuracy) for r in done] == [(Outcome.TRAINED, 0.9)]
