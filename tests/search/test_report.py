"""The report, on a run folder written by hand: no training, every number known."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

from protege.search import (
    Config,
    Outcome,
    TeacherProfile,
    TrialRecord,
    hypervolume,
    load_run,
    write_report,
)
from protege.search.report import choice_importances, hypervolume_curve, rule_savings

TEACHER = {"macs": 1000, "params": 100, "val_accuracy": 0.95, "test_accuracy": 0.94,
           "latency_ms": 0.5, "classes": 10}


def _records() -> list[TrialRecord]:
    """Accuracy follows ``width.a`` only; MACs follow both choices."""
    records = []
    for n in range(12):
        a, b = [0.25, 0.5, 1.0][n % 3], [0.5, 1.0][n // 3 % 2]
        records.append(TrialRecord(
            number=n, outcome=Outcome.TRAINED, arch={"width.a": a, "width.b": b},
            accuracy=0.6 + 0.3 * a + 0.001 * n, macs=int(1000 * a * b), params=int(100 * a),
            train_seconds=2.0, history=(0.5, 0.6 + 0.3 * a)))
    records += [
        TrialRecord(number=12, outcome=Outcome.REJECTED, arch={"width.a": 1.0, "width.b": 1.0},
                    macs=1000, params=100, reason="macs 1000 > max_macs 900 (over by 11%)"),
        TrialRecord(number=13, outcome=Outcome.STOPPED, arch={"width.a": 0.25, "width.b": 0.5},
                    macs=125, params=25, train_seconds=0.5,
                    reason="curve: after epoch 1/2 accuracy 0.5 ..."),
        TrialRecord(number=14, outcome=Outcome.SKIPPED, arch={"width.a": 0.25, "width.b": 1.0},
                    macs=250, params=25, reason="predictor: accuracy 0.6 ± 0.01 ..."),
        TrialRecord(number=15, outcome=Outcome.REUSED, arch={"width.a": 1.0, "width.b": 0.5},
                    accuracy=0.9, macs=500, params=100, duplicate_of=2),
        TrialRecord(number=16, outcome=Outcome.FAILED, arch={"width.a": 0.5, "width.b": 0.5},
                    reason="RuntimeError: out of memory"),
    ]
    return records


def _write_run(out: Path, records: list[TrialRecord], *, finished: bool = True) -> Path:
    out.mkdir(parents=True)
    config = Config.from_dict({"n_trials": len(records), "strategy": "random",
                               "constraints": {"max_accuracy_drop": 0.1, "max_macs": 0.9},
                               "latency": {"runtime": "onnxruntime", "precision": "int8",
                                           "batch_size": 8}})
    (out / "config.yaml").write_text(yaml.safe_dump({"task": "digits", **config.to_dict()},
                                                    sort_keys=False))
    (out / "trials.jsonl").write_text(
        "".join(json.dumps(r.to_dict()) + "\n" for r in records))
    if not finished:
        return out
    front = [r for r in records if r.number in (0, 1, 5)]
    (out / "pareto.json").write_text(json.dumps([
        {"trial": r.number, "arch": r.arch, "accuracy": r.accuracy, "macs": r.macs,
         "params": r.params, "latency_ms_measured": 0.1 + 0.2 * (r.macs or 0) / 1000}
        for r in front]))
    pick = {"trial": 1, "arch": records[1].arch, "macs": records[1].macs,
            "params": records[1].params, "search_accuracy": records[1].accuracy,
            "val_accuracy": 0.9, "test_accuracy": 0.89, "meets_constraints": True,
            "finetune_seconds": 3.0, "macs_ratio": 0.5, "latency_ms": 0.2}
    (out / "summary.json").write_text(json.dumps({
        "teacher": TEACHER, "hypervolume": 0.5, "pick": pick,
        "hypervolume_reference": {"accuracy": 0.1, "macs": 1.0},
        "onnx": {"path": "student.onnx", "max_abs_diff": 2e-6, "samples": 64,
                 "size_bytes": 1234}}))
    return out


def _write_study(out: Path, records: list[TrialRecord]) -> None:
    study = optuna.create_study(storage=f"sqlite:///{out / 'study.db'}", study_name="protege",
                                directions=["maximize", "minimize"])
    start = datetime.datetime(2024, 1, 1)
    for r in records:
        state = (optuna.trial.TrialState.COMPLETE if r.outcome.completed
                 else optuna.trial.TrialState.FAIL if r.outcome == Outcome.FAILED
                 else optuna.trial.TrialState.PRUNED)
        trial = optuna.trial.create_trial(
            state=state, values=[r.accuracy, r.macs] if r.outcome.completed else None,
            user_attrs={"outcome": r.outcome.value} | ({"reason": r.reason} if r.reason else {}))
        trial.datetime_start = start + datetime.timedelta(seconds=2 * r.number)
        trial.datetime_complete = trial.datetime_start + datetime.timedelta(seconds=1.5)
        study.add_trial(trial)


def test_report_writes_markdown_html_and_every_plot(tmp_path):
    records = _records()
    out = _write_run(tmp_path / "run", records)
    _write_study(out, records)
    written = write_report(out)
    names = {path.name for path in written}
    assert names == {"report.md", "report.html", "front.png", "latency.png", "hypervolume.png",
                     "timeline.png", "importances.png"}
    for path in written:
        assert path.stat().st_size > 0
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    for heading in ("## Trials", "## Pareto front", "## Hypervolume", "## Which choices mattered",
                    "## What the limits and rules saved", "## Pick"):
        assert heading in md
    assert "max abs difference 2e-06" in md
    # latencies named with the settings they were taken on (latency:), not "batch 1"
    assert "0.1500 ms per forward pass against the teacher's 0.5000 (onnxruntime int8, " \
           "batch 8, 1 thread)" in md
    assert "| 1 | 0.7510 | 250 | 0.250 |" in md  # the front's table
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5
    assert not re.search(r"src='(?!data:)", page)  # every image is embedded


def test_the_front_shows_predicted_against_measured_latency(tmp_path):
    """An int8 latency search: each front member's predicted and measured latency, the
    measurement's repeatability and the predictor's error on the front."""
    records = _records()
    out = _write_run(tmp_path / "run", records)
    _write_study(out, records)
    front = json.loads((out / "pareto.json").read_text())
    for member, guess in zip(front, (0.12, 0.16, 0.5), strict=True):
        member.update(latency_ms_predicted=guess, latency_repeatability=0.05,
                      latency_usable=True, latency_runtime="onnxruntime",
                      latency_precision="int8", latency_batch=8, latency_threads=1)
    front[2]["latency_usable"] = False
    (out / "pareto.json").write_text(json.dumps(front))
    write_report(out)
    md = (out / "report.md").read_text()
    assert "| params | latency ms (predicted) | latency ms (measured) |" in md
    # trial 1: 250 MACs, measured 0.1 + 0.2 * 0.25 = 0.15, predicted 0.16
    assert "| 1 | 0.7510 | 250 | 0.250 | 50 | 0.1600 | 0.1500 (±5%) |" in md
    assert "(±5%) unusable |" in md
    errors = sorted(100 * abs(m["latency_ms_predicted"] - m["latency_ms_measured"])
                    / m["latency_ms_measured"] for m in front)
    assert f"median error {errors[1]:.1f}%, largest {errors[2]:.1f}%" in md
    assert "Latency (onnxruntime int8, batch 8, 1 thread, this CPU)" in md
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "**unusable**" not in md  # the pick (trial 1) was measured cleanly
    front[1]["latency_usable"] = False
    (out / "pareto.json").write_text(json.dumps(front))
    write_report(out)
    md = (out / "report.md").read_text()
    pick = next(line for line in md.splitlines() if line.startswith("Trial 1: "))
    assert "0.1500 ms per forward pass" in pick
    assert "(**unusable**: its repeated measurements spread ±5 %" in pick


def test_the_report_of_an_unfinished_run_says_so(tmp_path):
    out = _write_run(tmp_path / "run", _records()[:3], finished=False)
    write_report(out)
    assert "has not finished: 3 trials so far" in (out / "report.md").read_text()
    assert not (out / "study.db").exists()  # reading a run never creates a storage


def test_importances_find_the_choice_that_drives_accuracy():
    importances = choice_importances(_records(), ["accuracy", "macs"])
    assert set(importances) == {"accuracy", "macs"}
    accuracy = importances["accuracy"]
    assert accuracy["width.a"] > 0.9 > accuracy["width.b"]
    assert importances["macs"]["width.b"] > 0.05  # MACs follow both choices
    assert choice_importances(_records()[:2], ["accuracy", "macs"]) == {}


def test_hypervolume_curve_grows_to_the_study_hypervolume():
    records = _records()
    curve = hypervolume_curve(records, TeacherProfile(**TEACHER), ["accuracy", "macs"])
    assert [n for n, _ in curve] == [r.number for r in records]
    values = [v for _, v in curve]
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[0] == pytest.approx((0.675 - 0.1) * (1 - 0.125))  # one student: a rectangle
    trained = [(r.accuracy, r.macs / 1000) for r in records
               if r.outcome == Outcome.TRAINED]
    # The study's measure: costs over the teacher's, reference (chance accuracy, 1).
    assert values[-1] == pytest.approx(hypervolume(trained, reference=(0.1, 1.0)))


def test_rule_savings_count_each_rule_and_estimate_the_time():
    saved = rule_savings(_records())
    assert (saved["rejected"], saved["skipped"], saved["stopped"], saved["reused"]) == (1, 1, 1, 1)
    assert saved["mean_train_seconds"] == pytest.approx(2.0)
    assert saved["spent_seconds"] == pytest.approx(12 * 2.0 + 0.5)
    assert saved["saved_seconds"] == pytest.approx(3 * 2.0 + 1.5)


def test_records_written_before_outcomes_were_stored_still_load():
    legacy = [
        {"number": 0, "state": "complete", "arch": {}, "accuracy": 0.9, "history": [0.9]},
        {"number": 1, "state": "pruned", "arch": {}, "pruned_reason": "macs 9 > max_macs 8"},
        {"number": 2, "state": "pruned", "arch": {}, "pruned_reason": "curve: ...",
         "history": [0.5]},
        {"number": 3, "state": "pruned", "arch": {}, "pruned_reason": "gain: ..."},
        {"number": 4, "state": "complete", "arch": {}, "accuracy": 0.9, "duplicate_of": 0},
        {"number": 5, "state": "failed", "arch": {}, "error": "RuntimeError: boom"},
    ]
    records = [TrialRecord.from_dict(data) for data in legacy]
    assert [r.outcome.value for r in records] == [
        "trained", "rejected", "stopped", "skipped", "reused", "failed"]
    assert records[5].reason == "RuntimeError: boom"
    assert records[1].reason == "macs 9 > max_macs 8"


def test_load_run_reads_back_what_a_search_wrote(tmp_path):
    records = _records()
    run = load_run(_write_run(tmp_path / "run", records))
    assert run.records == tuple(records)
    assert run.teacher is not None and run.teacher.latency_ms == 0.5
    assert run.pick is not None and run.pick.trial == 1
    assert run.record(5).arch == records[5].arch
    with pytest.raises(ValueError, match="no trial 99"):
        run.record(99)
    assert run.open_study() is None
    with pytest.raises(FileNotFoundError, match="not a protege run folder"):
        load_run(tmp_path / "elsewhere")
