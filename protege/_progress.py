"""The CLI's live progress: one line per finished trial, readable in a terminal and in a log.

A line carries the study's count against its budget with elapsed time and an ETA,
what became of the trial, the current front's size, the best pick so far and the
counts of rejected, skipped, stopped and failed trials. No carriage returns or bars: the same
text reads well in a plain log (Lightning's own bars are off during trials).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from protege.search import Outcome, TrialRecord, pareto_indices, read_records
from protege.search.pick import choose, cost_of

__all__ = ["TrialProgress", "clock"]


def clock(seconds: float) -> str:
    """``1:05`` or ``1:02:05``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _ratio(macs: int | None, teacher_macs: int | None) -> str:
    if macs is None:
        return "?"
    if teacher_macs:
        return f"{macs / teacher_macs:.3f}x"
    return f"{macs / 1e6:.3f}M" if macs >= 1e5 else f"{macs / 1e3:.1f}K"


class TrialProgress:
    """A trial callback that prints the study's progress after each trial.

    Args:
        total: The study's trial budget.
        teacher_accuracy: The teacher's validation accuracy (for the best pick so far).
        teacher_macs: The teacher's MACs (costs are shown as a fraction of them).
        max_accuracy_drop: The accuracy limit of the pick.
        records_file: The run's ``trials.jsonl``; when it exists, counts cover the
            whole study (earlier sessions and other workers), not only this process.
        stream: Where lines go.
        cost: The cost the front and the pick minimise
            (:func:`protege.search.pick.pick_cost`); ``latency`` also shows each
            student's predicted latency.
    """

    def __init__(self, *, total: int, teacher_accuracy: float | None = None,
                 teacher_macs: int | None = None, max_accuracy_drop: float = 0.0,
                 records_file: Path | None = None, stream: TextIO | None = None,
                 cost: str = "macs") -> None:
        self.total = total
        self.floor = (teacher_accuracy - max_accuracy_drop
                      if teacher_accuracy is not None else None)
        self.teacher_macs = teacher_macs
        self.records_file = records_file
        self.stream = stream or sys.stdout
        self.start = time.perf_counter()
        self.here = 0
        self.seen: dict[int, TrialRecord] = {}
        self.cost = cost

    def _records(self, latest: TrialRecord) -> list[TrialRecord]:
        if self.records_file is not None and self.records_file.is_file():
            try:
                self.seen.update((r.number, r) for r in read_records(self.records_file))
            except ValueError:  # half-written by another worker: keep what we have
                pass
        self.seen[latest.number] = latest
        return sorted(self.seen.values(), key=lambda r: r.number)

    def _best(self, trained: list[TrialRecord]) -> TrialRecord | None:
        """The pick so far: the rule of :func:`protege.search.pick.choose`."""
        floor = self.floor - 1e-12 if self.floor is not None else math.inf
        chosen = choose(trained, floor=floor, cost=self.cost)
        return chosen[0] if chosen is not None else None

    def _size(self, record: TrialRecord) -> str:
        """MACs as a fraction of the teacher's, and the predicted latency in a latency search."""
        size = _ratio(record.macs, self.teacher_macs)
        if self.cost == "latency":
            size += " ?" if record.latency_ms is None else f" {record.latency_ms:.4f} ms"
        return size

    def line(self, record: TrialRecord) -> str:
        """The progress line after ``record`` finished."""
        self.here += 1
        records = self._records(record)
        kinds = [r.outcome.value for r in records]
        done = sum(kind not in ("failed", "running") for kind in kinds)
        elapsed = time.perf_counter() - self.start
        left = max(self.total - done, 0)
        eta = clock(elapsed / self.here * left) if left else "0:00"
        kind = record.outcome.value
        head = (f"trial {record.number:>3} [{done}/{self.total} {clock(elapsed)} ETA {eta}] "
                f"{kind:<8}")
        if kind in ("trained", "reused"):
            note = f" (as trial {record.duplicate_of})" if record.duplicate_of is not None else ""
            what = (f"acc {record.accuracy:.4f} MACs {self._size(record)} "
                    f"{record.train_seconds or 0:.1f}s{note}")
        else:
            what = record.reason or ("no reason recorded" if record.outcome == Outcome.FAILED
                                     else "")
        trained = [r for r, k in zip(records, kinds, strict=True)
                   if k == "trained" and r.accuracy is not None]
        front = pareto_indices([(r.accuracy or 0.0, cost_of(r, self.cost)) for r in trained])
        best = self._best(trained)
        pick = (f"best #{best.number} {self._size(best)} "
                f"acc {best.accuracy:.4f}" if best is not None else "best -")
        counts = (f"rejected {kinds.count('rejected')} skipped {kinds.count('skipped')} "
                  f"stopped {kinds.count('stopped')} failed {kinds.count('failed')}")
        return f"{head} {what} | front {len(front)}, {pick} | {counts}"

    def __call__(self, study: Any, record: TrialRecord) -> None:
        """A :data:`protege.search.TrialCallback`: print the line after ``record``."""
        print(self.line(record), file=self.stream, flush=True)
