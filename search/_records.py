"""What a study keeps about each trial, the teacher and the pick, as plain JSON-able records."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from protege.search import _attrs as attrs

__all__ = ["Outcome", "Pick", "TrialRecord", "load_records", "record_of", "records_of"]


class Outcome(str, enum.Enum):
    """What became of a trial, one word each.

    ``trained``: distilled to the end of its budget. ``reused``: the same student as
    an earlier trial, whose result it copies. ``rejected``: over a hard limit, never
    trained. ``skipped``: a rule judged it not worth training (the accuracy
    predictor, the hypervolume gain). ``stopped``: a rule (or a scheduler) stopped
    its training. ``failed``: an error (see the reason). ``running``: not finished.
    """

    TRAINED = "trained"
    REUSED = "reused"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    STOPPED = "stopped"
    FAILED = "failed"
    RUNNING = "running"

    @property
    def completed(self) -> bool:
        """Whether the trial has an accuracy (trained or reused)."""
        return self in (Outcome.TRAINED, Outcome.REUSED)

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One trial: the student it tried and what became of it.

    Attributes:
        number: The trial's number in the study.
        outcome: What became of it (:class:`Outcome`).
        arch: The student's architecture.
        accuracy: Validation accuracy after the brief distillation (trained or reused).
        macs: MACs per sample.
        params: Parameter count.
        latency_ms: Predicted latency (ms), when latency is an objective or a limit.
        train_seconds: Wall time of the distillation.
        reason: Why it was rejected, skipped, stopped or failed, with the numbers.
        history: Validation accuracy after each epoch.
        duplicate_of: Trial whose result was reused for the same architecture.
        features: What the accuracy predictor learns from (encoded architecture, log-MACs).
        provenance: What made it: commit, dirty tree, package versions, config hash and
            the machine that ran it (``protege.provenance``); None in older run folders.
        rungs: In a ``method: rungs`` study, the validation accuracy at each rung the
            student reached (rung 0 first); ``accuracy`` is the last of them, and
            ``history`` and ``train_seconds`` cover every rung. In a ``method: oneshot``
            study, the one score of its slice of the trained supernet (rung 0). Empty
            otherwise.
    """

    number: int
    outcome: Outcome
    arch: dict[str, Any]
    accuracy: float | None = None
    macs: int | None = None
    params: int | None = None
    latency_ms: float | None = None
    train_seconds: float | None = None
    reason: str | None = None
    history: tuple[float, ...] = ()
    duplicate_of: int | None = None
    features: tuple[float, ...] = ()
    provenance: dict[str, Any] | None = None
    rungs: tuple[float, ...] = ()

    @property
    def rung(self) -> int | None:
        """The highest rung the student reached (``method: rungs``), else None."""
        return len(self.rungs) - 1 if self.rungs else None

    @property
    def trained(self) -> bool:
        """Whether this trial's own training finished (not a copy of an earlier one)."""
        return self.outcome == Outcome.TRAINED

    def costs(self) -> dict[str, float | None]:
        """The value of every cost objective, by name (None where not measured)."""
        return {"macs": self.macs, "params": self.params, "latency": self.latency_ms}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outcome"] = self.outcome.value
        data["history"] = list(self.history)
        data["features"] = list(self.features)
        data["rungs"] = list(self.rungs)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        """A record from :meth:`to_dict`'s mapping, or from a ``trials.jsonl`` line written
        before outcomes were stored (``state`` and ``pruned_reason``/``error``)."""
        names = {field.name for field in dataclasses.fields(cls)}
        known = {key: value for key, value in data.items() if key in names}
        if "outcome" not in known:
            known["outcome"] = _legacy_outcome(data)
            known["reason"] = data.get("pruned_reason") or data.get("error")
        known["outcome"] = Outcome(known["outcome"])
        known["history"] = tuple(known.get("history") or ())
        known["features"] = tuple(known.get("features") or ())
        known["rungs"] = tuple(known.get("rungs") or ())
        return cls(**known)


def _legacy_outcome(data: dict[str, Any]) -> Outcome:
    """The outcome of a record written before outcomes were stored, from its state."""
    state = data.get("state")
    if state == "complete":
        return Outcome.REUSED if data.get("duplicate_of") is not None else Outcome.TRAINED
    if state == "pruned":
        if (data.get("pruned_reason") or "").startswith(("macs", "params", "latency")):
            return Outcome.REJECTED
        return Outcome.STOPPED if data.get("history") or data.get("train_seconds") \
            else Outcome.SKIPPED
    return Outcome.FAILED if state == "failed" else Outcome.RUNNING


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pick:
    """The student chosen under the limits, after its final distillation.

    Attributes:
        trial: Trial it was chosen from.
        arch: Its architecture.
        macs: MACs per sample.
        params: Parameter count.
        search_accuracy: Validation accuracy after the trial's brief distillation.
        val_accuracy: Validation accuracy after the final fine-tune.
        test_accuracy: Test accuracy after the final fine-tune, if test data was given.
        meets_constraints: Whether the student returned meets every limit: its
            fine-tuned validation accuracy is within ``max_accuracy_drop`` of the
            teacher's (students over a cost limit never train, so never get here).
        finetune_seconds: Wall time of the final fine-tune.
        finetuned: Every student fine-tuned to choose this one, in order: ``trial``,
            ``macs``, ``search_accuracy``, ``val_accuracy``, ``meets``, ``seconds``
            (one entry unless ``Config.finetunes`` > 1).
    """

    trial: int
    arch: dict[str, Any]
    macs: int
    params: int
    search_accuracy: float
    val_accuracy: float
    test_accuracy: float | None
    meets_constraints: bool
    finetune_seconds: float
    finetuned: tuple[dict[str, Any], ...] = ()


def _outcome_of(trial: FrozenTrial) -> Outcome:
    stored = trial.user_attrs.get(attrs.OUTCOME)
    if stored is not None:
        return Outcome(stored)
    if trial.state == TrialState.RUNNING or trial.state == TrialState.WAITING:
        return Outcome.RUNNING
    legacy = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
              TrialState.FAIL: "failed"}.get(trial.state, "running")
    return _legacy_outcome({"state": legacy, **trial.user_attrs})


def record_of(trial: FrozenTrial) -> TrialRecord:
    """The record of an Optuna trial, from the user attributes protege sets."""
    get = trial.user_attrs.get
    outcome = _outcome_of(trial)
    if trial.state == TrialState.FAIL and outcome != Outcome.FAILED:
        outcome = Outcome.FAILED  # e.g. a trial whose process died after its outcome was set
    elif trial.state in (TrialState.RUNNING, TrialState.WAITING):
        # The outcome is stored just before the study is told: until then another worker
        # reading the storage sees an outcome without its accuracy. Not final: running.
        outcome = Outcome.RUNNING
    accuracy = trial.values[0] if trial.state == TrialState.COMPLETE and trial.values else None
    reason = get(attrs.REASON) or get(attrs.LEGACY_PRUNED_REASON) or get(attrs.LEGACY_ERROR)
    return TrialRecord(
        number=trial.number,
        outcome=outcome,
        arch=dict(get(attrs.ARCH, trial.params)),
        accuracy=accuracy,
        macs=get(attrs.MACS),
        params=get(attrs.PARAMS),
        latency_ms=get(attrs.LATENCY),
        train_seconds=get(attrs.TRAIN_SECONDS),
        reason=reason,
        history=tuple(get(attrs.HISTORY) or ()),
        duplicate_of=get(attrs.DUPLICATE_OF),
        features=tuple(get(attrs.FEATURES) or ()),
        provenance=get(attrs.PROVENANCE),
    )


def records_of(trials: Sequence[FrozenTrial]) -> list[TrialRecord]:
    """Records of these trials, in their order (budget-spent ones left out, and enqueued
    ones that have not started: a queue, not trials)."""
    return [record_of(trial) for trial in trials
            if trial.state != TrialState.WAITING
            and not trial.user_attrs.get(attrs.BUDGET_SPENT)
            and not trial.user_attrs.get(attrs.LEGACY_SKIPPED)]


def load_records(study: optuna.Study) -> list[TrialRecord]:
    """Records of every trial in a study, by number (budget-spent ones left out)."""
    return records_of(study.get_trials(deepcopy=False))
