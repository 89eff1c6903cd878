"""The trial function, shared by every backend: one student from sample to objectives."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch.utils.data import TensorDataset

from protege._errors import describe
from protege.distill import TeacherOutputs, TrainResult, train_student
from protege.estimators import count_macs
from protege.search._config import Config
from protege.search._pruning import PruningRule
from protege.search._storage import WORKER_ATTR, worker_id
from protege.spaces import Architecture, SearchSpace

__all__ = ["SKIPPED_ATTR", "BudgetReached", "Limits", "StudentEvaluator", "TrialFunction",
           "device_of", "failure_reason", "suggest_arch"]

SKIPPED_ATTR = "skipped"
"""Marks a trial that never ran because the budget was spent: not part of the study's record."""

logger = logging.getLogger(__name__)

Trainer = Callable[..., TrainResult]


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


def student_costs(student: torch.nn.Module, example_input: torch.Tensor,
                  latency: Any = None) -> dict[str, float]:
    """``macs``, ``params`` and, given a latency predictor, the predicted ``latency`` (ms)."""
    macs, params = count_macs(student, example_input)
    costs = {"macs": float(macs), "params": float(params)}
    if latency is not None:
        costs["latency"] = float(latency.predict_model(student))
    return costs


class BudgetReached(Exception):
    """Another worker took the last slot of ``n_trials`` while this trial started."""


class _Stop(Exception):
    """Raised from the epoch report to stop a trial; carries the rule's reason."""


@dataclasses.dataclass(frozen=True)
class StudentEvaluator:
    """What every backend does with one architecture: build, cost, check, distil.

    Holds no backend state, so Ray can ship it to its workers once.
    """

    space: SearchSpace
    outputs: TeacherOutputs
    val: TensorDataset
    example_input: torch.Tensor
    config: Config
    limits: Limits
    accelerator: str = "cpu"
    trainer: Trainer = train_student
    latency: Any = None
    teacher: torch.nn.Module | None = None

    def build(self, arch: Architecture, number: int) -> tuple[torch.nn.Module, dict[str, float]]:
        """The student and its costs: ``macs``, ``params``, and the predicted ``latency``
        (ms) when a latency predictor is in use."""
        student = self.space.materialize(arch, init=self.config.init,
                                         seed=self.config.seed + number)
        return student, student_costs(student, self.example_input, self.latency)

    def features(self, arch: Architecture, costs: dict[str, float]) -> list[float]:
        """What the accuracy predictor learns from: the encoded architecture and log-MACs."""
        return [*map(float, self.space.encode(arch)), math.log(max(costs["macs"], 1.0))]

    def objectives(self, accuracy: float, costs: dict[str, float]) -> tuple[float, ...]:
        return (accuracy, *(costs[name] for name in self.config.objectives[1:]))

    def train(self, student: torch.nn.Module, number: int,
              report: Callable[[int, float], None]) -> TrainResult:
        return self.trainer(
            student.to(device_of(self.accelerator)), self.outputs, self.val,
            config=self.config.distill, seed=self.config.seed + number, report=report,
            accelerator=self.accelerator, teacher=self.teacher,
        )


class TrialFunction:
    """The Optuna trial: sample, check the limits, distil, return the objectives.

    A student over a hard limit is rejected before any training (state PRUNED,
    ``pruned_reason`` says which limit and by how much). A student already trained
    in this study is not trained again: its result is reused and marked
    ``duplicate_of``. Pruning rules may stop training after any epoch.
    """

    def __init__(self, evaluator: StudentEvaluator, *,
                 rules: tuple[PruningRule, ...] = ()) -> None:
        self.evaluator = evaluator
        self.config = evaluator.config
        self.rules = rules

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        # First of all: which process runs it, so others can fail it if this one dies.
        trial.set_user_attr(WORKER_ATTR, worker_id())
        before = sum(t.number < trial.number and t.state != TrialState.FAIL
                     for t in trial.study.get_trials(deepcopy=False))
        if before >= self.config.n_trials:
            trial.set_user_attr(SKIPPED_ATTR, True)
            raise BudgetReached(f"n_trials={self.config.n_trials} reached by other workers")
        try:
            return self._evaluate(trial)
        except (optuna.TrialPruned, _Stop):
            raise
        except Exception as exc:
            reason = failure_reason(exc)
            trial.set_user_attr("error", reason)
            logger.warning("trial %d failed: %s", trial.number, reason)
            raise

    def _evaluate(self, trial: optuna.Trial) -> tuple[float, ...]:
        evaluator = self.evaluator
        arch = suggest_arch(trial, evaluator.space)
        trial.set_user_attr("arch", arch)
        student, costs = evaluator.build(arch, trial.number)
        trial.set_user_attr("macs", int(costs["macs"]))
        trial.set_user_attr("params", int(costs["params"]))
        if "latency" in costs:
            trial.set_user_attr("latency", round(costs["latency"], 5))
        features = evaluator.features(arch, costs)
        trial.set_user_attr("features", features)
        for name, violation in evaluator.limits.violations(costs).items():
            trial.set_constraint(name, min(violation, 1e6))
        reason = evaluator.limits.reason(costs)
        if reason is not None:
            return self._prune(trial, reason)
        earlier = _completed_with(trial.study, arch, before=trial.number)
        if earlier is not None:
            trial.set_user_attr("duplicate_of", earlier.number)
            trial.set_user_attr("history", earlier.user_attrs.get("history"))
            return evaluator.objectives(earlier.values[0], costs)
        rule_costs = {name: costs[name] for name in self.config.objectives[1:]}
        for rule in self.rules:
            why = rule.before_training(trial.study, features=features, costs=rule_costs)
            if why is not None:
                return self._prune(trial, why)
        history: list[float] = []
        epochs = self.config.distill.trial_epochs(len(evaluator.outputs.targets))

        def report(epoch: int, accuracy: float) -> None:
            history.append(accuracy)
            trial.set_user_attr("history", list(history))
            for rule in self.rules:
                why = rule.after_epoch(trial.study, epoch=epoch,
                                       epochs=epochs, accuracy=accuracy,
                                       costs=rule_costs)
                if why is not None:
                    raise _Stop(why)

        start = time.perf_counter()
        try:
            result = evaluator.train(student, trial.number, report)
        except _Stop as stop:
            trial.set_user_attr("train_seconds", round(time.perf_counter() - start, 3))
            return self._prune(trial, str(stop))
        trial.set_user_attr("train_seconds", round(result.seconds, 3))
        return evaluator.objectives(result.val_accuracy, costs)

    @staticmethod
    def _prune(trial: optuna.Trial, reason: str) -> Any:
        trial.set_user_attr("pruned_reason", reason)
        raise optuna.TrialPruned(reason)


_OOM = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                         getattr(torch.cuda, "OutOfMemoryError", None), MemoryError)
             if isinstance(t, type))


def failure_reason(exc: BaseException) -> str:
    """One line for ``trials.jsonl``: the error, and for memory or NaN what may help."""
    text = describe(exc)
    if isinstance(exc, _OOM):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the next trial the memory back
        return f"out of memory ({text}); a smaller distill.batch_size may fit"
    if isinstance(exc, FloatingPointError):
        return f"{text}; a lower distill.lr may keep the loss finite"
    return text


def _completed_with(study: optuna.Study, arch: Architecture, *,
                    before: int) -> optuna.trial.FrozenTrial | None:
    for past in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if past.number < before and past.user_attrs.get("arch") == arch:
            return past
    return None
