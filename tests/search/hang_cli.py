"""``protege`` CLI that hangs once, mid-training, so a test can SIGKILL it there.

Usage: ``python hang_cli.py run CONFIG --out DIR`` (the arguments of ``protege``),
with ``PROTEGE_TEST_HANG`` set to ``trial:N`` (the N-th trial's training, after its
first epoch) or ``finetune`` (the final fine-tune, after its first epoch), and
``PROTEGE_TEST_MARKER`` the file created when it hangs. Once the marker exists the
command runs normally: running it again is a plain resume.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from protege import distill


def _install() -> None:
    spec = os.environ.get("PROTEGE_TEST_HANG", "")
    marker = Path(os.environ.get("PROTEGE_TEST_MARKER", "hanging"))
    real = distill.train_student
    trials = []

    def hang() -> None:
        marker.touch()
        time.sleep(600)

    def trainer(student, *args, report=None, **kwargs):  # type: ignore[no-untyped-def]
        if report is not None:
            trials.append(1)
        wanted = (spec == "finetune" and report is None) or (
            spec.startswith("trial:") and report is not None and len(trials) == int(spec[6:]))
        if wanted and not marker.exists():
            inner = report

            def report(epoch: int, accuracy: float) -> None:  # type: ignore[no-redef]
                if inner is not None:
                    inner(epoch, accuracy)
                hang()

        return real(student, *args, report=report, **kwargs)

    distill.train_student = trainer  # the seam every trial and fine-tune calls


if __name__ == "__main__":
    _install()
    from protege.cli import main

    sys.exit(main(sys.argv[1:]))
