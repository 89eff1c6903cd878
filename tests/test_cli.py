from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from protege.cli import main

CONFIG = """
task: digits
n_trials: 4
strategy: random
constraints: {max_accuracy_drop: 0.2, max_macs: 0.9}
distill: {epochs: 1, finetune_epochs: 1}
"""

COMMANDS = ("run", "resume", "worker", "report", "export", "dashboard", "compare", "teacher")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real run through the CLI entry point, shared by this module's tests."""
    base = tmp_path_factory.mktemp("cli")
    config = base / "quick.yaml"
    config.write_text(CONFIG)
    out = base / "run"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("PROTEGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["run", str(config), "--out", str(out), "--set", "seed=1"]) == 0
    return out, printed.getvalue()


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_run_prints_progress_front_and_pick_and_fills_the_run_folder(finished_run):
    out, printed = finished_run
    lines = [line for line in printed.splitlines() if line.startswith("trial ")]
    assert len(lines) == 4
    assert "[4/4 " in lines[-1] and "ETA 0:00" in lines[-1]
    assert all(" | front " in line and " failed " in line for line in lines)
    assert "Pareto front" in printed and "pick: trial" in printed
    assert "max abs difference against PyTorch" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pick"]["macs_ratio"] <= 0.9
    assert summary["onnx"]["max_abs_diff"] < 1e-4
    assert (out / "best" / "student.onnx").stat().st_size > 0
    assert "seed: 1" in (out / "config.yaml").read_text()
    for name in ("report.md", "report.html", "front.png", "latency.png", "hypervolume.png",
                 "timeline.png"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"usage: protege {command}" in capsys.readouterr().out


def test_console_script_help():
    done = subprocess.run([sys.executable, "-m", "protege.cli", "--help"], capture_output=True,
                          text=True, check=True)
    assert all(command in done.stdout for command in COMMANDS)
    assert "exit codes" in done.stdout


def test_resume_continues_the_study_and_extends_it(finished_run, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    assert main(["resume", str(run), "--set", "n_trials=5"]) == 0
    printed = capsys.readouterr().out
    trial_lines = [line for line in printed.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 1 and "[5/5 " in trial_lines[0]
    assert len((run / "trials.jsonl").read_text().splitlines()) == 5


def test_report_rewrites_the_report_and_its_plots(finished_run, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    for path in [run / "report.md", run / "report.html", *run.glob("*.png")]:
        path.unlink()
    assert main(["report", str(run)]) == 0
    listed = capsys.readouterr().out
    assert "report.html" in listed and "front.png" in listed
    assert "## Pareto front" in (run / "report.md").read_text()
    assert "data:image/png;base64," in (run / "report.html").read_text()
    assert (run / "front.png").stat().st_size > 0


def test_export_onnx_int8_reports_its_numbers(finished_run, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    assert main(["export", str(run), "--format", "onnx", "--int8", "--calibration", "128"]) == 0
    printed = capsys.readouterr().out
    assert "max abs difference against PyTorch" in printed
    assert "float32" in printed and "int8" in printed and "smaller" in printed
    figures = json.loads((run / "best" / "export.json").read_text())
    assert figures["onnx"]["max_abs_diff"] < 1e-4
    int8 = figures["int8"]
    assert int8["int8"]["size_bytes"] < int8["fp32"]["size_bytes"]
    assert 0.0 <= int8["int8"]["accuracy"] <= 1.0 and int8["int8"]["latency_ms"] > 0
    assert (run / "best" / "student.int8.onnx").stat().st_size > 0
    assert "Int8" in (run / "report.md").read_text()


def test_export_torchscript_of_another_trial(finished_run, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    other = next(r["number"] for r in records
                 if r["outcome"] == "trained" and r["number"] != summary["pick"]["trial"])
    assert main(["export", str(run), "--format", "torchscript", "--trial", str(other)]) == 0
    assert "max abs difference against PyTorch 0 " in capsys.readouterr().out
    assert (run / f"trial-{other}" / "student.torchscript.pt").stat().st_size > 0
    assert (run / f"trial-{other}" / "arch.json").is_file()


def test_worker_joins_the_run_and_runs_the_missing_trial(finished_run, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    summary = (run / "summary.json").read_text()
    argv = ["worker", str(run / "config.yaml"), "--out", str(run), "--set", "n_trials=5",
            "--storage", f"sqlite:///{run / 'study.db'}"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[5/5 " in printed and "worker done: the study holds 5 trials" in printed
    assert (run / "summary.json").read_text() == summary  # a worker never picks
    assert len((run / "trials.jsonl").read_text().splitlines()) == 5


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def test_dashboard_serves_the_study_on_localhost(finished_run):
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen([sys.executable, "-m", "protege.cli", "dashboard",
                               str(finished_run[0]), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(server.stdout, lines), daemon=True).start()
    try:
        first = lines.get(timeout=120)
        assert first.startswith("optuna-dashboard on http://127.0.0.1:"), first
        url = first.split()[2]
        with urllib.request.urlopen(url, timeout=30) as page:
            assert page.status == 200
        api = url.replace("/dashboard/", "/api/studies")
        with urllib.request.urlopen(api, timeout=30) as answer:
            studies = json.load(answer)["study_summaries"]
        assert [s["study_name"] for s in studies] == ["protege"]
        study = url.replace("/dashboard/", f"/api/studies/{studies[0]['study_id']}?after=0")
        with urllib.request.urlopen(study, timeout=30) as answer:
            trials = json.load(answer)["trials"]
        attrs = {a["key"] for t in trials for a in t["user_attrs"]}
        assert {"macs", "params", "arch"} <= attrs  # what the dashboard shows per trial
        server.send_signal(signal.SIGTERM)  # as Ctrl-C: a clean stop, exit code 0
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


@pytest.mark.parametrize(
    "text, extra, message",
    [
        ("task: digits\ndistill: {epochz: 1}\n", [], "unknown key 'distill.epochz'"),
        ("task: nosuchtask\n", [], "unknown task 'nosuchtask'"),
        ("task: digits\n", ["--set", "n_trials=-3"], "n_trials: must be >= 1"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, capsys, text, extra, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["run", str(config), "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "study.db").exists()


@pytest.mark.parametrize("argv, message", [
    (["report", "{tmp}/nothing"], "is not a protege run folder"),
    (["resume", "{tmp}/nothing"], "is not a protege run folder"),
    (["export", "{tmp}/nothing", "--format", "torchscript", "--int8"], "--int8 needs --format"),
    (["dashboard", "{tmp}/nothing"], "is not a protege run folder"),
])
def test_run_folder_mistakes_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main([arg.format(tmp=tmp_path) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_an_unexpected_error_is_one_line_unless_verbose(finished_run, monkeypatch, capsys):
    import sys

    def broken(out):
        raise RuntimeError("boom")

    monkeypatch.setattr(sys.modules["protege.search"], "write_report", broken)
    assert main(["report", str(finished_run[0])]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "-v" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["report", str(finished_run[0]), "-v"])


def test_quiet_report_prints_nothing(finished_run, tmp_path, capsys):
    run = _copy(finished_run[0], tmp_path)
    assert main(["-q", "report", str(run)]) == 0
    assert capsys.readouterr().out == ""


def test_teacher_command_shows_the_cached_teacher(capsys):
    assert main(["teacher", "digits"]) == 0
    assert "digits teacher: val accuracy" in capsys.readouterr().out


COMPARE = """
task: digits
seeds: [0]
workers: 1
report: cli_compare
budget: {trials: 2}
search: {distill: {epochs: 1, finetune_epochs: 1}}
arms:
  protege: {}
  torch_pruning: {kind: torch_pruning}
"""


def test_compare_runs_every_arm_writes_the_report_and_reuses_finished_arms(
        tmp_path, tmp_path_factory, monkeypatch, capsys):
    import protege.experiments._baselines
    import protege.experiments._compare

    monkeypatch.setenv("PROTEGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    config = tmp_path / "compare.yaml"
    config.write_text(COMPARE)
    results = tmp_path / "results"
    argv = ["compare", str(config), "--out", str(tmp_path / "out"), "--results", str(results)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[1/2," in printed and "[2/2," in printed
    assert "| protege | search |" in printed and "| torch_pruning | torch_pruning |" in printed
    records = json.loads((results / "cli_compare.json").read_text())["records"]
    assert {(r["arm"], r["seed"]) for r in records} == {("protege", 0), ("torch_pruning", 0)}
    assert f"protege compare {config} --out" in (results / "cli_compare.md").read_text()

    def trains(*args, **kwargs):
        raise AssertionError("a finished arm trained again")

    monkeypatch.setattr(protege.experiments._compare, "_search_arm", trains)
    monkeypatch.setattr(protege.experiments._baselines, "run_baseline", trains)
    assert main(argv) == 0
    assert "[2/2," in capsys.readouterr().out


def test_compare_config_mistake_exits_2_with_one_line(tmp_path, capsys):
    config = tmp_path / "compare.yaml"
    config.write_text(COMPARE.replace("kind: torch_pruning", "kind: magic"))
    assert main(["compare", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "magic" in err


def test_the_printed_front_gives_predicted_and_measured_latency_when_predicted():
    from types import SimpleNamespace

    from protege.cli import _front_table
    from protege.search import Outcome, TeacherProfile, TrialRecord

    teacher = TeacherProfile(macs=1000, params=100, val_accuracy=0.95, latency_ms=0.5)
    front = [TrialRecord(number=3, outcome=Outcome.TRAINED, arch={}, accuracy=0.94, macs=250,
                         params=20, latency_ms=0.21)]
    table = _front_table(SimpleNamespace(teacher=teacher, front=front), {3: 0.2})
    header, _, teacher_row, row = table.splitlines()
    assert header.endswith("pred. ms  meas. ms") and teacher_row.split()[-2:] == ["-", "0.5000"]
    assert row.split()[-2:] == ["0.2100", "0.2000"]
    plain = [dataclasses.replace(front[0], latency_ms=None)]
    assert "pred. ms" not in _front_table(SimpleNamespace(teacher=teacher, front=plain), {})
