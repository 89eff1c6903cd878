"""The one trial function: one architecture from build to outcome, for every backend.

:func:`run_trial` knows no backend: it builds the student, costs it, checks the hard
limits, reuses an identical earlier student, asks the rules, distils, and returns a
:class:`TrialResult` with a typed :class:`~protege.search.Outcome`. The in-process
backend and workers call it through :class:`OptunaObjective`; Ray calls it in its
trial actors (``protege.search._ray``). Both store the result with
:func:`write_result`, so a study's records look the same whichever backend ran.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch.utils.data import TensorDataset

from protege import distill
from protege.common import describe
from protege.distill import TeacherOutputs, TrainResult
from protege.estimators import LatencyPredictor, TorchLatencyPredictor, count_macs
from protege.provenance import machine
from protege.search import _attrs as attrs
from protege.search._config import Config
from protege.search._records import Outcome, TrialRecord, records_of
from protege.search._rules import TrialRule
from protege.search._rungs import checkpoint_path, save_checkpoint
from protege.search._storage import worker_id
from protege.spaces import Architecture, SearchSpace

__all__ = ["Limits", "StudentEvaluator", "TrialResult", "device_of", "failure_reason",
           "finished_records", "run_optuna_trial", "run_trial", "suggest_arch", "write_result"]

logger = logging.getLogger(__name__)

Trainer = Callable[..., TrainResult]
EpochCallback = Callable[[int, float], None]
"""Called after each epoch with (epoch, validation accuracy): a backend's progress hook."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Absolute hard limits; ``inf`` where unset."""

    max_macs: float = float("inf")
    max_params: float = float("inf")
    max_latency_ms: float = float("inf")

    def _pairs(self, costs: dict[str, float]) -> list[tuple[str, float, float]]:
        limits = {"macs": self.max_macs, "params": self.max_params,
                  "latency": self.max_latency_ms}
        return [(name, costs[name], limit) for name, limit in limits.items() if name in costs]

    def violations(self, costs: dict[str, float]) -> dict[str, float]:
        """Relative excess per limit (<= 0 within it), as samplers' constraints."""
        return {name: value / limit - 1.0 for name, value, limit in self._pairs(costs)}

    def reason(self, costs: dict[str, float]) -> str | None:
        """Which limit a student breaks and by how much, or None."""
        for name, value, limit in self._pairs(costs):
            if value > limit:
                unit = "_ms" if name == "latency" else ""
                return (f"{name} {value:.4g} > max_{name}{unit} {limit:.4g} "
                        f"(over by {100 * (value / limit - 1):.1f}%)")
        return None


def suggest_arch(trial: optuna.Trial, space: SearchSpace) -> Architecture:
    """Ask the sampler for one option per choice, as an index into its option list.

    Returns the canonical architecture (``space.repair``): the student that is
    actually built, so equal students share one record.
    """
    return space.repair({name: options[trial.suggest_int(name, 0, len(options) - 1)]
                         for name, options in space.choices.items()})


def device_of(accelerator: str) -> torch.device:
    """The torch device a Lightning accelerator name trains on."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def student_costs(student: torch.nn.Module, example_input: torch.Tensor) -> dict[str, float]:
    """``macs`` and ``params``; a predicted ``latency`` comes from the architecture
    (``latency.predict(arch)``), not from the built student."""
    macs, params = count_macs(student, example_input)
    return {"macs": float(macs), "params": float(params)}


class _Stop(Exception):
    """Raised from the epoch hook to stop training; carries the rule's reason."""


@dataclasses.dataclass(frozen=True)
class StudentEvaluator:
    """What every backend does with one architecture: build, cost, check, distil.

    Holds tensors and the space, no backend state and no file paths, so Ray ships it
    to its nodes once through its object store. ``trainer`` defaults to
    :func:`protege.distill.train_student`.
    """

    space: SearchSpace
    outputs: TeacherOutputs
    val: TensorDataset
    example_input: torch.Tensor
    config: Config
    limits: Limits
    accelerator: str = "cpu"
    trainer: Trainer | None = None
    latency: LatencyPredictor | TorchLatencyPredictor | None = None
    teacher: torch.nn.Module | None = None
    rules: tuple[TrialRule, ...] = ()
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The study's code and config stamp; each trial adds the machine that ran it."""

    def build(self, arch: Architecture, number: int) -> tuple[torch.nn.Module, dict[str, float]]:
        """The student and its costs: ``macs``, ``params``, and the predicted ``latency``
        (ms) when a latency predictor is in use."""
        student = self.space.materialize(arch, init=self.config.init,
                                         seed=self.config.seed + number)
        costs = student_costs(student, self.example_input)
        if self.latency is not None:  # from the architecture: no export, no forward pass
            costs["latency"] = float(self.latency.predict(arch))
        return student, costs

    def features(self, arch: Architecture, costs: dict[str, float]) -> list[float]:
        """What the accuracy predictor learns from: the encoded architecture and log-MACs."""
        return [*map(float, self.space.encode(arch)), math.log(max(costs["macs"], 1.0))]

    def objectives(self, accuracy: float, costs: dict[str, float]) -> tuple[float, ...]:
        return (accuracy, *(costs[name] for name in self.config.objectives[1:]))

    def train(self, student: torch.nn.Module, number: int, report: EpochCallback, *,
              epochs: int | None = None,
              optimizer_state: dict[str, Any] | None = None) -> TrainResult:
        """Distil ``student`` for the trial's budget, or ``epochs`` going on from
        ``optimizer_state`` (a rung of ``method: rungs``)."""
        trainer = self.trainer or distill.train_student  # looked up now: a test seam
        extra: dict[str, Any] = {}
        if epochs is not None:
            extra.update(epochs=epochs, optimizer_state=optimizer_state)
        return trainer(
            student.to(device_of(self.accelerator)), self.outputs, self.val,
            config=self.config.distill, seed=self.config.seed + number, report=report,
            accelerator=self.accelerator, teacher=self.teacher, **extra,
        )

    def calibrate(self, student: torch.nn.Module) -> float:
        """A score with no training (rung 0 of ``method: rungs``, every student of
        ``oneshot``): the student's validation accuracy with its BatchNorm statistics
        recalibrated on ``calibration_samples`` training samples (the same seeded sample
        for every student)."""
        inputs = self.outputs.inputs
        rows = distill.calibration_rows(len(inputs),
                                        min(self.config.calibration_samples, len(inputs)))
        student = student.to(device_of(self.accelerator))
        distill.recalibrate_batchnorm(student, inputs[rows])
        return distill.evaluate(student, self.val)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrialResult:
    """What :func:`run_trial` made of one architecture (JSON-able through ``to_dict``).

    Attributes:
        outcome: What became of it.
        arch: The architecture built.
        costs: ``macs``, ``params`` and, with a latency predictor, ``latency`` (ms);
            empty when the student could not be built.
        accuracy: Validation accuracy (trained or reused), else None.
        reason: Why it was rejected, skipped, stopped or failed, with the numbers.
        history: Validation accuracy after each epoch.
        train_seconds: Wall time of the distillation, when it trained.
        duplicate_of: The earlier trial whose result a reused trial copies.
        features: What the accuracy predictor learns from.
        provenance: What made it (the study's code and config, this trial's machine).
        rungs: Accuracy at rung 0 (``method: rungs``; with ``oneshot`` the score as a
            slice of the trained supernet), else empty.
    """

    outcome: Outcome
    arch: Architecture
    costs: dict[str, float] = dataclasses.field(default_factory=dict)
    accuracy: float | None = None
    reason: str | None = None
    history: tuple[float, ...] = ()
    train_seconds: float | None = None
    duplicate_of: int | None = None
    features: tuple[float, ...] = ()
    provenance: dict[str, Any] | None = None
    rungs: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(outcome=self.outcome.value, history=list(self.history),
                    features=list(self.features), rungs=list(self.rungs))
        return data

    def record(self, number: int) -> TrialRecord:
        """This result as trial ``number``'s record."""
        latency = self.costs.get("latency")
        return TrialRecord(
            number=number, outcome=self.outcome, arch=dict(self.arch), accuracy=self.accuracy,
            macs=int(self.costs["macs"]) if "macs" in self.costs else None,
            params=int(self.costs["params"]) if "params" in self.costs else None,
            latency_ms=round(latency, 5) if latency is not None else None,
            train_seconds=self.train_seconds, reason=self.reason, history=self.history,
            duplicate_of=self.duplicate_of, features=self.features, provenance=self.provenance,
            rungs=self.rungs)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialResult:
        return cls(**{**data, "outcome": Outcome(data["outcome"]),
                      "history": tuple(data.get("history") or ()),
                      "features": tuple(data.get("features") or ()),
                      "rungs": tuple(data.get("rungs") or ())})


def run_trial(evaluator: StudentEvaluator, arch: Architecture, *, number: int,
              finished: Sequence[TrialRecord], on_epoch: EpochCallback | None = None,
              checkpoint: Path | None = None) -> TrialResult:
    """Evaluate one architecture: build, cost, check limits, reuse, ask the rules, distil.

    Args:
        evaluator: The study's data, space, limits, rules and trainer.
        arch: The architecture (already repaired: ``space.repair``).
        number: The trial's number (seeds its initialisation and training).
        finished: Records of the trials finished before this one: the rules judge
            against them and an identical trained student is reused from them.
        on_epoch: The backend's progress hook, called after each epoch.
        checkpoint: With ``method: rungs``, where the student is saved after rung 0
            (its recalibrated weights), for its promotions to go on from.

    Returns:
        The result; an error while building or training is a ``failed`` result with
        its one-line reason, never an exception.
    """
    history: list[float] = []
    costs: dict[str, float] = {}
    features: tuple[float, ...] = ()
    start = time.perf_counter()

    stamp = {**evaluator.provenance, "machine": machine()}  # a Ray node is another machine

    def result(outcome: Outcome, **fields: Any) -> TrialResult:
        return TrialResult(outcome=outcome, arch=arch, costs=costs, features=features,
                           history=tuple(history), provenance=stamp, **fields)

    try:
        student, costs = evaluator.build(arch, number)
        features = tuple(evaluator.features(arch, costs))
        reason = evaluator.limits.reason(costs)
        if reason is not None:
            return result(Outcome.REJECTED, reason=reason)
        earlier = next((r for r in finished if r.trained and r.arch == arch
                        and r.number < number), None)
        if earlier is not None:
            history.extend(earlier.history)
            return result(Outcome.REUSED, accuracy=earlier.accuracy,
                          duplicate_of=earlier.number)
        rule_costs = {name: costs[name] for name in evaluator.config.objectives[1:]}
        for rule in evaluator.rules:
            why = rule.before_training(finished, features=features, costs=rule_costs)
            if why is not None:
                return result(Outcome.SKIPPED, reason=why)
        if evaluator.config.method != "trials":  # rung 0 / a supernet's slice: no training
            start = time.perf_counter()
            accuracy = evaluator.calibrate(student)
            if checkpoint is not None:
                save_checkpoint(checkpoint, student, None)
            return result(Outcome.TRAINED, accuracy=accuracy, rungs=(accuracy,),
                          train_seconds=round(time.perf_counter() - start, 3))
        epochs = evaluator.config.distill.trial_epochs(len(evaluator.outputs.targets))

        def report(epoch: int, accuracy: float) -> None:
            history.append(accuracy)
            if on_epoch is not None:
                on_epoch(epoch, accuracy)
            for rule in evaluator.rules:
                why = rule.after_epoch(finished, epoch=epoch, epochs=epochs, accuracy=accuracy,
                                       costs=rule_costs)
                if why is not None:
                    raise _Stop(why)

        start = time.perf_counter()
        try:
            trained = evaluator.train(student, number, report)
        except _Stop as stop:
            return result(Outcome.STOPPED, reason=str(stop),
                          train_seconds=round(time.perf_counter() - start, 3))
        return result(Outcome.TRAINED, accuracy=trained.val_accuracy,
                      train_seconds=round(trained.seconds, 3))
    except Exception as exc:
        reason = failure_reason(exc)
        logger.warning("trial %d failed: %s", number, reason)
        logger.debug("trial %d failed", number, exc_info=True)
        return result(Outcome.FAILED, reason=reason)


def write_result(trial: optuna.Trial, result: TrialResult, evaluator: StudentEvaluator) -> None:
    """Store ``result`` as ``trial``'s user attributes and constraints (before it is told)."""
    trial.set_user_attr(attrs.ARCH, result.arch)
    trial.set_user_attr(attrs.OUTCOME, result.outcome.value)
    if result.costs:
        trial.set_user_attr(attrs.MACS, int(result.costs["macs"]))
        trial.set_user_attr(attrs.PARAMS, int(result.costs["params"]))
        if "latency" in result.costs:
            trial.set_user_attr(attrs.LATENCY, round(result.costs["latency"], 5))
        for name, violation in evaluator.limits.violations(result.costs).items():
            trial.set_constraint(name, min(violation, 1e6))
    if result.features:
        trial.set_user_attr(attrs.FEATURES, list(result.features))
    if result.reason is not None:
        trial.set_user_attr(attrs.REASON, result.reason)
    if result.history:
        trial.set_user_attr(attrs.HISTORY, list(result.history))
    if result.train_seconds is not None:
        trial.set_user_attr(attrs.TRAIN_SECONDS, result.train_seconds)
    if result.duplicate_of is not None:
        trial.set_user_attr(attrs.DUPLICATE_OF, result.duplicate_of)
    if result.provenance is not None:
        trial.set_user_attr(attrs.PROVENANCE, result.provenance)


def finished_records(trials: Sequence[optuna.trial.FrozenTrial], *,
                     before: int) -> list[TrialRecord]:
    """Records of the finished ones of ``trials`` numbered below ``before``: what the rules
    judge a new trial against and where an identical student is reused from."""
    return [r for r in records_of(trials) if r.outcome != Outcome.RUNNING and r.number < before]


def run_optuna_trial(study: optuna.Study, evaluator: StudentEvaluator, *,
                     n_trials: int, checkpoints: Path | None = None) -> TrialRecord | None:
    """One trial of the in-process backend (or of a worker on a shared storage).

    Asks the study's sampler for an architecture, runs :func:`run_trial`, stores the
    result and tells the study: a completed student with its objectives; a rejected,
    skipped or stopped one as Optuna's PRUNED and a failed one as FAIL, with the
    outcome in the user attributes either way (Optuna's ask-and-tell interface).

    ``checkpoints`` is the folder of ``method: rungs``'s checkpoints.

    Returns:
        The trial's record, or None when other workers had spent the budget of
        ``n_trials`` meanwhile (the trial is then failed and marked budget-spent).
    """
    trial = study.ask()
    # First of all: which process runs it, so others can fail it if this one dies.
    trial.set_user_attr(attrs.WORKER, worker_id())
    trials = study.get_trials(deepcopy=False)  # one read serves the budget and the rules
    before = sum(t.number < trial.number and t.state != TrialState.FAIL
                 and not t.user_attrs.get(attrs.BUDGET_SPENT) for t in trials)
    if before >= n_trials:
        trial.set_user_attr(attrs.BUDGET_SPENT, True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    arch = suggest_arch(trial, evaluator.space)
    trial.set_user_attr(attrs.ARCH, arch)
    history: list[float] = []

    def on_epoch(epoch: int, accuracy: float) -> None:
        history.append(accuracy)
        trial.set_user_attr(attrs.HISTORY, list(history))

    result = run_trial(evaluator, arch, number=trial.number,
                       finished=finished_records(trials, before=trial.number), on_epoch=on_epoch,
                       checkpoint=None if checkpoints is None
                       else checkpoint_path(checkpoints, trial.number, 0))
    write_result(trial, result, evaluator)
    if result.outcome.completed:
        assert result.accuracy is not None
        study.tell(trial, list(evaluator.objectives(result.accuracy, result.costs)))
    else:
        study.tell(trial, state=TrialState.FAIL if result.outcome == Outcome.FAILED
                   else TrialState.PRUNED)
    return result.record(trial.number)


_OOM = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                         getattr(torch.cuda, "OutOfMemoryError", None), MemoryError)
             if isinstance(t, type))


def failure_reason(exc: BaseException) -> str:
    """One line for the trial's record: the error, and for memory or NaN what may help."""
    text = describe(exc)
    if isinstance(exc, _OOM):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the next trial the memory back
        return f"out of memory ({text}); a smaller distill.batch_size may fit"
    if isinstance(exc, FloatingPointError):
        return f"{text}; a lower distill.lr may keep the loss finite"
    return text
