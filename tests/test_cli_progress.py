"""Progress of long steps shows at the CLI's default verbosity, not with -q (issue 18)."""

from __future__ import annotations

import logging

import pytest

from protege.cli import main


@pytest.mark.parametrize("flags, level", [([], logging.INFO), (["-q"], logging.WARNING),
                                          (["-v"], logging.INFO)])
def test_progress_lines_show_unless_quiet(flags, level, tmp_path):
    progress = logging.getLogger("protege.progress")
    before = progress.level
    try:
        assert main([*flags, "report", str(tmp_path / "missing")]) == 2
        assert progress.getEffectiveLevel() == level
    finally:
        progress.setLevel(before)
