from __future__ import annotations

import json
import subprocess
import sys

import pytest

from protege.cli import main

CONFIG = """
task: digits
n_trials: 3
strategy: random
constraints: {max_accuracy_drop: 0.2, max_macs: 0.5}
distill: {epochs: 1, finetune_epochs: 1}
"""


def test_run_prints_the_front_and_writes_the_run_folder(tmp_path, capsys):
    config = tmp_path / "quick.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--set", "seed=1"]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front" in printed and "pick: trial" in printed
    assert printed.count("trial ") >= 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pick"]["macs_ratio"] <= 0.5
    assert "seed: 1" in (out / "config.yaml").read_text()


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


def test_teacher_command_shows_the_cached_teacher(capsys):
    assert main(["teacher", "digits"]) == 0
    assert "digits teacher: val accuracy" in capsys.readouterr().out


def test_console_script_help():
    done = subprocess.run([sys.executable, "-m", "protege.cli", "--help"], capture_output=True,
                          text=True, check=True)
    assert "run" in done.stdout and "teacher" in done.stdout
