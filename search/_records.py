"""What a study keeps about each trial, the teacher and the pick, as plain JSON-able records."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

__all__ = ["Pick", "TeacherProfile", "TrialRecord", "record_of"]

_STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


@dataclasses.dataclass(frozen=True)
class TeacherProfile:
    """The teacher's cost and quality, the reference of every limit."""

    macs: int
    params: int
    val_accuracy: float
    test_accuracy: float | None = None
    latency_ms: float | None = None
    classes: int | None = None

    @property
    def chance(self) -> float:
        """Accuracy of guessing: the reference point's accuracy for hypervolumes."""
        return 1.0 / self.classes if self.classes else 0.0

    def costs(self) -> dict[str, float]:
        """The teacher's value of each cost objective (latency only when measured)."""
        costs = {"macs": float(self.macs), "params": float(self.params)}
        if self.latency_ms is not None:
            costs["latency"] = float(self.latency_ms)
        return costs


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial: the student it tried and what became of it.

    Attributes:
        number: Optuna's trial number.
        state: ``complete``, ``pruned`` (rejected or stopped: see
            ``pruned_reason``), ``failed`` (see ``error``) or ``running``.
        arch: The student's architecture.
        accuracy: Validation accuracy after the brief distillation.
        macs: MACs per sample.
        params: Parameter count.
        latency_ms: Predicted latency (ms), when latency is an objective or a limit.
        train_seconds: Wall time of the distillation.
        pruned_reason: Which limit or rule rejected the student, with the numbers.
        history: Validation accuracy after each epoch.
        duplicate_of: Trial whose result was reused for the same architecture.
        error: Why the trial failed.
    """

    number: int
    state: str
    arch: dict[str, Any]
    accuracy: float | None = None
    macs: int | None = None
    params: int | None = None
    latency_ms: float | None = None
    train_seconds: float | None = None
    pruned_reason: str | None = None
    history: tuple[float, ...] = ()
    duplicate_of: int | None = None
    error: str | None = None

    def costs(self) -> dict[str, float | None]:
        """The value of every cost objective, by name (None where not measured)."""
        return {"macs": self.macs, "params": self.params, "latency": self.latency_ms}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["history"] = list(self.history)
        return data


@dataclasses.dataclass(frozen=True)
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


def record_of(trial: FrozenTrial) -> TrialRecord:
    """The record of an Optuna trial, from the user attributes protege sets."""
    attrs = trial.user_attrs
    accuracy = trial.values[0] if trial.state == TrialState.COMPLETE and trial.values else None
    return TrialRecord(
        number=trial.number,
        state=_STATES.get(trial.state, trial.state.name.lower()),
        arch=dict(attrs.get("arch", trial.params)),
        accuracy=accuracy,
        macs=attrs.get("macs"),
        params=attrs.get("params"),
        latency_ms=attrs.get("latency"),
        train_seconds=attrs.get("train_seconds"),
        pruned_reason=attrs.get("pruned_reason"),
        history=tuple(attrs.get("history", ())),
        duplicate_of=attrs.get("duplicate_of"),
        error=attrs.get("error"),
    )


def load_records(study: optuna.Study) -> list[TrialRecord]:
    """Records of every trial in a study, by number."""
    return [record_of(trial) for trial in study.get_trials(deepcopy=False)
            if not trial.user_attrs.get("skipped")]
