"""Names of the user attributes protege stores on Optuna trials and studies, in one place.

Every backend writes a trial through :func:`protege.search._trial.write_result`, and
:func:`protege.search._records.record_of` reads it back; nothing else spells these keys.
"""

from __future__ import annotations

ARCH = "arch"
"""The student's architecture (a JSON mapping), as built (``space.repair``)."""
MACS = "macs"
PARAMS = "params"
LATENCY = "latency"
"""Predicted latency (ms)."""
FEATURES = "features"
"""What the accuracy predictor learns from: the encoded architecture and log-MACs."""
OUTCOME = "outcome"
"""A :class:`protege.search.Outcome` value: what became of the trial."""
REASON = "reason"
"""Why a trial was rejected, skipped, stopped or failed, with the numbers."""
HISTORY = "history"
"""Validation accuracy after each epoch."""
TRAIN_SECONDS = "train_seconds"
DUPLICATE_OF = "duplicate_of"
"""The earlier trial whose result a reused trial copies."""
WORKER = "worker"
"""The process (``host:pid``) that runs a trial, so others can fail it if it dies."""
PROVENANCE = "provenance"
"""What made the trial: commit, dirty tree, versions, config hash, machine
(``protege.provenance``)."""
BUDGET_SPENT = "budget_spent"
"""Marks a trial that never ran because other workers had spent the budget: not part of
the study's record."""

CLAIM = "claim"
"""Promotion trial (``method: rungs``): ``[student, rung]``, the student's trial number and
the rung it is trained to; written in one call right after the trial is created."""
GAVE_UP = "gave_up"
"""Promotion trial that failed with an error: its student is not promoted to that rung again
(one whose process died is)."""
LOST_CLAIM = "lost_claim"
"""Promotion trial that found an earlier claim of the same student and rung, and gave way."""

# Keys of run folders written before the outcome was stored (still read).
LEGACY_PRUNED_REASON = "pruned_reason"
LEGACY_ERROR = "error"
LEGACY_SKIPPED = "skipped"

SPACE = "space"
"""Study attribute: a hash of the space and objectives, so a resume with another is refused."""
TEACHER = "teacher"
"""Study attribute: the teacher's profile."""
STUDY_NAME = "protege"
"""The name of protege's study in its storage."""
RUNGS_STUDY_NAME = "protege.rungs"
"""The study beside it that holds the promotions of a ``method: rungs`` search: one trial
per student and rung above 0 (the sampler's study holds each student's rung 0)."""
