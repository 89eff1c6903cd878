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
