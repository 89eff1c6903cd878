"""Progress of long steps shows at the CLI's default verbosity, not with -q (issue 18)."""

from __future__ import annotations

import logging

import pytest

import protege._cli_runs
from protege.cli import main


@pytest.mark.parametrize("flags, level", [([], logging.INFO), (["-q"], logging.WARNING),
                                          (["-v"], logging.INFO)])
def test_progress_lines_show_unless_quiet(flags, level, tmp_path, monkeypatch):
    progress = logging.getLogger("protege.progress")
    before = progress.level
    during: list[int] = []

    def report(args: object) -> int:  # the command sees the level the flags ask for
        during.append(progress.getEffectiveLevel())
        raise FileNotFoundError(tmp_path / "missing")

    monkeypatch.setattr(protege._cli_runs, "_cmd_report", report)
    assert main([*flags, "report", str(tmp_path / "missing")]) == 2
    assert during == [level]
    assert progress.level == before  # main() called in-process leaves the logger as it was


def test_a_latency_search_shows_the_front_and_best_by_predicted_latency():
    import io

    from protege._progress import TrialProgress
    from protege.search import Outcome, TrialRecord

    progress = TrialProgress(total=3, teacher_accuracy=0.95, teacher_macs=1000,
                             max_accuracy_drop=0.1, stream=io.StringIO(), cost="latency")
    # trial: (accuracy, MACs, predicted ms); the fewest MACs is the slowest
    points = [(0.90, 100, 0.9), (0.91, 400, 0.3), (0.92, 200, 0.5)]
    lines = [progress.line(TrialRecord(number=i, outcome=Outcome.TRAINED, arch={}, accuracy=a,
                                       macs=m, latency_ms=ms, train_seconds=1.0))
             for i, (a, m, ms) in enumerate(points)]
    assert "acc 0.9200 MACs 0.200x 0.5000 ms 1.0s" in lines[-1]
    # (accuracy, latency) front: trials 1 and 2 (trial 0 is slower and less accurate)
    assert "| front 2, best #1 0.400x 0.3000 ms acc 0.9100 |" in lines[-1]
    by_macs = TrialProgress(total=3, teacher_accuracy=0.95, teacher_macs=1000,
                            max_accuracy_drop=0.1, stream=io.StringIO())
    last = [by_macs.line(TrialRecord(number=i, outcome=Outcome.TRAINED, arch={}, accuracy=a,
                                     macs=m, latency_ms=ms, train_seconds=1.0))
            for i, (a, m, ms) in enumerate(points)][-1]
    assert "| front 2, best #0 0.100x acc 0.9000 |" in last and " ms " not in last
