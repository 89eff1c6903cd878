"""The study: one teacher, its data, a config and a run folder; trials, front and pick.

Made by :func:`protege.search.create_study` (stages 1-4, ``_stages.py``);
:meth:`Study.optimize` runs trials on the config's backend (stage 5);
:meth:`Study.finish` measures the front, picks, fine-tunes, exports and reports.
"""

from __future__ import annotations

import copy
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
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from protege.distill import TeacherOutputs, evaluate
from protege.estimators import LatencySettings, measure_latency, measure_latency_stats
from protege.provenance import provenance
from protege.search import _attrs as attrs
from protege.search._config import Config
from protege.search._oneshot import ready_supernet
from protege.search._pareto import pareto_indices, scaled_hypervolume
from protege.search._profile import (
    TeacherProfile,
)
from protege.search._records import Outcome, Pick, TrialRecord, load_records
from protege.search._rungs import (
    LimitRule,
    Promotion,
    checkpoint_path,
    claimed,
    load_checkpoint,
    merge_promotions,
    next_promotion,
    run_promotion,
)
from protege.search._storage import (
    fail_dead_trials,
    storage_errors,
)
from protege.search._trial import (
    StudentEvaluator,
    device_of,
    run_optuna_trial,
)
from protege.search.export import export_pick_onnx, save_student, write_json
from protege.search.pick import (
    accuracy_floor,
    bisect,
    choose,
    cost_of,
    finetune_student,
    pick_cost,
    spread_front,
    validation_margin,
)
from protege.search.report import write_report
from protege.search.runfolder import write_records
from protege.spaces import SearchSpace

__all__ = ["FailureGuard", "SearchResult", "Study", "TooManyFailures", "TrialCallback",
           "front_hypervolume"]

logger = logging.getLogger(__name__)

TrialCallback = Callable[["Study", TrialRecord], None]
"""Called with the study and each trial's record as it finishes (as Optuna's callbacks);
a callback may call :meth:`Study.stop`."""

Data = Dataset | DataLoader


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchResult:
    """The outcome of a study.

    Attributes:
        out: The run folder.
        teacher: The teacher's cost and accuracy.
        trials: Every trial, by number.
        front: Pareto-optimal trained trials (accuracy up, costs down), by cost.
        hypervolume: Volume the front dominates over every objective, each cost
            divided by the teacher's, against the reference (chance accuracy, the
            teacher's costs).
        pick: The chosen student after its final distillation, or None when no
            trial completed.
        student: The chosen student's module (in eval mode), or None.
    """

    out: Path
    teacher: TeacherProfile
    trials: tuple[TrialRecord, ...]
    front: tuple[TrialRecord, ...]
    hypervolume: float
    pick: Pick | None
    student: nn.Module | None = dataclasses.field(default=None, repr=False)


class TooManyFailures(RuntimeError):
    """Most trials failed: the setup, not the students, is likely at fault."""


def front_hypervolume(records: Sequence[TrialRecord], teacher: TeacherProfile,
                      objectives: Sequence[str]) -> float:
    """Hypervolume of trained trials over every objective, costs divided by the teacher's.

    The reference point is fixed per task: chance accuracy and the teacher's costs.
    """
    teacher_costs = teacher.costs()
    scale = {n: teacher_costs[n] for n in objectives[1:] if n in teacher_costs}
    points = []
    for r in records:
        costs = r.costs()
        if r.outcome.completed and r.accuracy is not None and \
                all(costs[n] is not None for n in scale):
            points.append((r.accuracy, costs))
    return scaled_hypervolume(points, teacher_costs=scale, chance=teacher.chance)


def _cpu_latency(model: nn.Module, example_input: torch.Tensor,
                 settings: LatencySettings) -> float | None:
    """Latency (ms) on this CPU for the report, on ``latency:``'s runtime, precision, batch
    and threads (those of the front's measurements); a model left on a GPU (an online
    teacher) is timed as a CPU copy. None, logged, where it cannot be measured."""
    try:
        if any(p.device.type != "cpu" for p in model.parameters()):
            model = copy.deepcopy(model).cpu()
        value = measure_latency(model, example_input.cpu(), runtime=settings.runtime,
                                precision=settings.precision, batch_size=settings.batch_size,
                                threads=settings.threads)
        return None if math.isnan(value) else value  # NaN: too noisy here (logged)
    except Exception as exc:  # a report's figure must never cost the run its pick
        logger.warning("could not measure the latency of %s: %s", type(model).__name__, exc)
        return None


def _active(records: Sequence[TrialRecord]) -> int:
    """Trials that hold a slot of the budget: all but the failed ones."""
    return sum(r.outcome != Outcome.FAILED for r in records)


class FailureGuard:
    """Stops a study whose trials mostly fail: the setup, not the students, is at fault.

    Every backend feeds it the records of the trials it ran, in order.

    Args:
        max_failed_fraction: Stop once more than this fraction of at least 5 trials failed.
    """

    def __init__(self, max_failed_fraction: float) -> None:
        self.max_failed_fraction = max_failed_fraction
        self.attempts = self.failures = 0
        self.last_failure: TrialRecord | None = None

    def add(self, record: TrialRecord) -> TooManyFailures | None:
        """Count ``record``; the error to stop with, quoting the last failure, or None."""
        self.attempts += 1
        if record.outcome == Outcome.FAILED:
            self.failures += 1
            self.last_failure = record
        if self.attempts < 5 or self.failures <= self.max_failed_fraction * self.attempts:
            return None
        last = self.last_failure
        assert last is not None
        return TooManyFailures(
            f"{self.failures} of the {self.attempts} trials run so far failed (last failure, "
            f"trial {last.number}: {last.reason or 'no reason recorded'}); stopping early "
            "instead of spending the budget. Fix the cause (trials.jsonl has every reason) "
            "and run the same command again to resume.")


class Study:
    """A search of students of one teacher, on its data, under one config and run folder.

    Made by :func:`create_study`. Optuna's shape: :meth:`optimize` runs trials (again
    to extend the study), :meth:`stop` ends the current :meth:`optimize` after the
    running trial, :attr:`trials`, :attr:`front` and :attr:`hypervolume` read the
    study, :meth:`pick` fine-tunes the chosen student, :meth:`finetune` any trial's,
    :meth:`export` writes ONNX, and :meth:`finish` does the end of a run (front,
    pick, export, ``summary.json``, report).
    """

    def __init__(self, *, out: Path, profile: TeacherProfile, evaluator: StudentEvaluator,
                 test: TensorDataset | None, optuna_study: optuna.Study, worker: bool,
                 rung_study: optuna.Study | None = None) -> None:
        if evaluator.teacher is None:
            raise ValueError("a study's evaluator must hold the teacher (its fine-tunes and "
                             "exports need it)")
        self.out = out
        self.profile = profile
        self.evaluator = evaluator
        self.test = test
        self.optuna_study = optuna_study
        self.rung_study = rung_study
        """``method: rungs``: the promotions' study in the same storage (else None)."""
        if evaluator.config.method == "rungs" and rung_study is None:
            raise ValueError("a method: rungs study needs its promotions' study")
        self.worker = worker
        self._stop = False
        self._budget = evaluator.config.trials
        self._affordable: Callable[[TrialRecord, int], bool] | None = None
        self._config_limits = evaluator.limits
        self.supernet: dict[str, Any] | None = None
        """``method: oneshot``: the supernet's training facts (epochs, seconds,
        sample-passes, accuracy of its largest and smallest students per epoch) once it
        is trained or loaded; None before, and for the other methods."""

    # The study's data, space and settings are the evaluator's: one place holds them.

    @property
    def config(self) -> Config:
        """The resolved config."""
        return self.evaluator.config

    @property
    def teacher(self) -> nn.Module:
        assert self.evaluator.teacher is not None  # checked in __init__
        return self.evaluator.teacher

    @property
    def space(self) -> SearchSpace:
        return self.evaluator.space

    @property
    def outputs(self) -> TeacherOutputs:
        """The teacher's cached outputs on the training data."""
        return self.evaluator.outputs

    @property
    def val(self) -> TensorDataset:
        return self.evaluator.val

    @property
    def accelerator(self) -> str:
        return self.evaluator.accelerator

    # -- reading ---------------------------------------------------------------------------

    @property
    def trials(self) -> tuple[TrialRecord, ...]:
        """Every trial's record, by number (``method: rungs``: each student's record holds
        its promotions, and its accuracy is that of the highest rung it reached)."""
        return tuple(self._records())

    def _records(self) -> list[TrialRecord]:
        records = load_records(self.optuna_study)
        if self.rung_study is not None:
            return merge_promotions(records, self.rung_study.get_trials(deepcopy=False))
        if self.config.method == "oneshot":  # rung 0 only: each student's score as a slice
            return merge_promotions(records, ())
        return records

    @property
    def checkpoints(self) -> Path:
        """``method: rungs``: the folder of each student's weights at each rung."""
        return self.out / "rungs"

    def hypervolume_by_rung(self) -> list[float]:
        """``method: rungs``: the hypervolume of the students at each rung, each at its
        accuracy there (rung 0 first); empty for ``method: trials``."""
        done = [r for r in self.trials if r.trained and r.rungs]
        volumes = []
        for k in range(len(self.config.ladder)):
            at = [dataclasses.replace(r, accuracy=r.rungs[k]) for r in done if len(r.rungs) > k]
            volumes.append(front_hypervolume(at, self.profile, self.config.objectives))
        return volumes

    @property
    def front(self) -> tuple[TrialRecord, ...]:
        """The Pareto front of the trained trials (accuracy up, costs down), by cost."""
        done = [r for r in self.trials if r.trained]
        return tuple(done[i] for i in pareto_indices([self._point(r) for r in done]))

    @property
    def hypervolume(self) -> float:
        """The front's volume, costs divided by the teacher's, against (chance, teacher)."""
        return front_hypervolume([r for r in self.trials if r.trained], self.profile,
                                 self.config.objectives)

    def _point(self, record: TrialRecord) -> tuple[float, ...]:
        costs = record.costs()
        return (record.accuracy or 0.0,
                *(float(costs[name] or 0) for name in self.config.objectives[1:]))

    def _active(self) -> int:
        """Trials that hold a slot of the budget: all but the failed ones."""
        return _active(self.trials)

    # -- running ---------------------------------------------------------------------------

    def stop(self) -> None:
        """End the running :meth:`optimize` once the trial in progress has finished."""
        self._stop = True

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called during the running :meth:`optimize`."""
        return self._stop

    def optimize(self, *, n_trials: int | None = None, timeout: float | None = None,
                 callbacks: Sequence[TrialCallback] = ()) -> None:
        """Run trials.

        Args:
            n_trials: Trials to run in this call; None runs until the study holds the
                config's budget (``n_trials``, shared by every worker on the storage).
            timeout: Stop starting trials after this many seconds (default: the
                config's ``timeout``).
            callbacks: Called with the study and each finished trial's record.

        Raises:
            TooManyFailures: If more than ``rules.max_failed_fraction`` of the first
                trials (at least 5) failed; the message quotes the last failure.
            StorageError: If the storage is locked or unreachable.
        """
        self._stop = False
        if n_trials is not None:
            self._budget = self._active() + n_trials
        timeout = timeout if timeout is not None else self.config.timeout
        deadline = time.monotonic() + timeout if timeout is not None else None
        self._ready_supernet(train=True)
        if self.config.backend == "ray":
            from protege.search._ray import run_ray

            run_ray(self, budget=self._budget, deadline=deadline, callbacks=callbacks)
            write_records(self.out / "trials.jsonl", self.trials)
            return
        logger.info("study holds %d of %d trials", self._active(), self._budget)
        while True:
            timed_out = self._run_trials(deadline, callbacks)
            if self.worker or timed_out or self._stop:
                return
            self._wait_for_workers()
            # A worker that died mid-trial freed its slot: run it here.
            if self._active() >= self._budget:
                return

    def _ready_supernet(self, *, train: bool) -> None:
        """``method: oneshot``: from here on, students are cut from the trained supernet
        (trained now, once per run folder, when ``train``; else loaded if there is one)."""
        if self.config.method != "oneshot" or self.supernet is not None:
            return
        ready = ready_supernet(self.evaluator, self.out, train=train)
        if ready is not None:
            space, self.supernet = ready
            self.evaluator = dataclasses.replace(self.evaluator, space=space)

    def _run_trials(self, deadline: float | None, callbacks: Sequence[TrialCallback]) -> bool:
        """Run trials until the budget is held, time is up or :meth:`stop` was called.

        One trial at a time keeps the budget exact when several workers share the
        storage; a failed trial's slot is run again, as is that of a dead process.

        Returns:
            Whether it stopped because ``deadline`` (``time.monotonic``) passed.
        """
        if self.rung_study is not None:
            return self._run_rungs(deadline, callbacks)
        study = self.optuna_study
        guard = FailureGuard(self.config.rules.max_failed_fraction)
        records = load_records(study)
        while not self._stop:
            with storage_errors(self.config.storage):
                if fail_dead_trials(study):
                    records = load_records(study)
                if _active(records) >= self._budget:
                    return False
                if deadline is not None and time.monotonic() > deadline:
                    logger.info("timeout reached")
                    return True
                record = run_optuna_trial(study, self.evaluator, n_trials=self._budget)
                # one read per trial: the file, and the next round's budget check
                records = load_records(study)
                write_records(self.out / "trials.jsonl", records)
            if record is None:  # the budget was spent by other workers meanwhile
                return False
            for callback in callbacks:
                callback(self, record)
            error = guard.add(record)
            if error is not None:
                raise error
        return False

    def due_promotion(self) -> tuple[list[TrialRecord], Promotion | None]:
        """``method: rungs``: every trial's record (promotions folded in) and the promotion
        the ladder says is due next (MO-ASHA, highest rung first; one not yet reached nor
        claimed), else None: the one rule of every backend."""
        assert self.rung_study is not None
        promotions = self.rung_study.get_trials(deepcopy=False)  # one read: the records
        records = merge_promotions(load_records(self.optuna_study), promotions)  # and claims
        due = next_promotion([r for r in records if r.trained and r.rungs],
                             claimed(promotions), eta=self.config.rungs.eta,
                             top=len(self.config.ladder) - 1, objectives=self.config.objectives,
                             affordable=self._affordable,
                             tie_break=self.config.rungs.tie_break, limit=self._limit_rule(),
                             screen=self.config.rungs.screen)
        return records, due

    def _limit_rule(self) -> LimitRule | None:
        """``rungs.promotion: limit``: the rule that puts the pick's candidates first in
        every promotion above rung 0; None with ``front`` (MO-ASHA's order alone)."""
        if self.config.rungs.promotion != "limit":
            return None
        return LimitRule(teacher_accuracy=self.profile.val_accuracy,
                         floor=accuracy_floor(self.profile, self.config),
                         ladder=tuple(self.config.ladder), cost=pick_cost(self.config.objectives))

    def limit_promotions(self, affordable: Callable[[TrialRecord, int], bool] | None) -> None:
        """``method: rungs``: from now on, pass over the promotions that ``affordable(record,
        rung)`` says the compute left cannot pay for (a compute budget running out: a
        cheaper student's or a lower rung's promotion that fits is taken instead, and new
        students are still scored at rung 0); None lifts the limit. ``protege compare``
        uses it to spend an arm's whole budget, in sample-passes or in MAC-passes."""
        self._affordable = affordable

    def limit_macs(self, macs: float | None) -> None:
        """From now on, reject students of more than ``macs`` forward MACs before they
        train (they cost nothing, like any student over a hard limit); the config's own
        ``constraints.max_macs`` still holds, and None restores it alone. ``protege
        compare`` uses it so that no trial overspends a budget counted in MAC-passes."""
        limits = self._config_limits
        if macs is not None:
            limits = dataclasses.replace(limits, max_macs=min(limits.max_macs, macs))
        self.evaluator = dataclasses.replace(self.evaluator, limits=limits)

    @staticmethod
    def promoted_record(records: Sequence[TrialRecord], due: Promotion,
                        outcome: Outcome) -> TrialRecord:
        """The promoted student's record for the callbacks and the failure guard: failed
        when its promotion failed (it is not tried again)."""
        record = next(r for r in records if r.number == due.student)
        if outcome == Outcome.FAILED:
            record = dataclasses.replace(record, outcome=Outcome.FAILED,
                                         reason=f"promotion to rung {due.rung} failed")
        return record

    def _run_rungs(self, deadline: float | None, callbacks: Sequence[TrialCallback],
                   *, poll: float = 1.0) -> bool:
        """``method: rungs``: promote a student when the ladder says so (ASHA: highest rung
        first), else score a new one at rung 0, until the study holds its students and no
        promotion is due (or time is up, or :meth:`stop`). Workers on one storage run the
        same loop; a promotion another worker claimed first is left to it.

        Returns:
            Whether it stopped because ``deadline`` passed.
        """
        study, rungs = self.optuna_study, self.rung_study
        assert rungs is not None
        config = self.config
        guard = FailureGuard(config.rules.max_failed_fraction)
        while not self._stop:
            with storage_errors(config.storage):
                fail_dead_trials(study)
                fail_dead_trials(rungs)
                if deadline is not None and time.monotonic() > deadline:
                    logger.info("timeout reached")
                    return True
                records, due = self.due_promotion()
                record: TrialRecord | None
                if due is not None:
                    student = next(r for r in records if r.number == due.student)
                    outcome = run_promotion(rungs, self.evaluator, student, rung=due.rung,
                                            checkpoints=self.checkpoints, reason=due.reason)
                    if outcome is None:
                        continue  # another worker took it
                    records = self._records()  # read once: the record and trials.jsonl
                    record = self.promoted_record(records, due, outcome)
                elif _active(records) < self._budget:
                    record = run_optuna_trial(study, self.evaluator, n_trials=self._budget,
                                              checkpoints=self.checkpoints)
                    if record is None:
                        continue  # other workers spent the students' budget: promote
                    records = self._records()
                else:
                    running = [t for s in (study, rungs) for t in
                               s.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
                    if not running:
                        return False
                    time.sleep(poll)  # another worker's rung may make a promotion due
                    continue
                write_records(self.out / "trials.jsonl", records)
            for callback in callbacks:
                callback(self, record)
            error = guard.add(record)
            if error is not None:
                raise error
        return False

    def _wait_for_workers(self, *, poll: float = 2.0, limit: float = 600.0) -> None:
        """Let trials that other workers are still running finish before picking."""
        study = self.optuna_study
        deadline = time.monotonic() + limit
        while True:
            studies = [study] if self.rung_study is None else [study, self.rung_study]
            running = []
            for each in studies:  # a ladder's promotions run in the second study
                fail_dead_trials(each)
                running += each.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                return
            if time.monotonic() > deadline:
                logger.warning("%d trials still running after %.0fs; picking without them",
                               len(running), limit)
                return
            logger.info("waiting for %d trials of other workers", len(running))
            time.sleep(poll)

    # -- finishing -------------------------------------------------------------------------

    def _tune(self, record: TrialRecord, *, test: bool = False,
              epochs: int | None = None) -> tuple[Pick, nn.Module]:
        config = self.config if epochs is None else dataclasses.replace(
            self.config, distill=dataclasses.replace(self.config.distill, finetune_epochs=epochs))
        return finetune_student(record, floor=accuracy_floor(self.profile, self.config),
                                space=self.space, outputs=self.outputs, val=self.val,
                                test=self.test if test else None, config=config,
                                device=device_of(self.accelerator),
                                accelerator=self.accelerator, teacher=self.teacher)

    def pick(self) -> tuple[Pick, nn.Module] | None:
        """Choose, fine-tune and save (``best/``) the student to return.

        The smallest trained student within ``constraints.max_accuracy_drop`` (else
        the most accurate; with ``method: oneshot`` and ``oneshot.relative_limit``, the
        smallest within that drop of the most accurate) is fine-tuned; with
        ``finetunes`` > 1 the front is then bisected by fine-tuned accuracy
        (:func:`protege.search.pick.bisect`). With ``oneshot.finetune_front``, front members
        cheaper than it are fine-tuned too, and the cheapest of them within the limit after
        its fine-tune, if any, is the pick instead.

        With ``method: rungs`` the top rung is the fine-tune: the smallest student at the
        top rung within the limit (else the most accurate there) is returned as trained,
        not trained again (:meth:`_pick_rung`).

        Returns:
            The pick and its module (eval mode), or None when no trial completed.
        """
        if self.rung_study is not None:
            return self._pick_rung()
        self._ready_supernet(train=False)  # oneshot: fine-tuned from the supernet's weights
        done = [r for r in self.trials if r.trained]
        cost = pick_cost(self.config.objectives)
        drop = self.config.constraints.max_accuracy_drop
        relative = self.config.method == "oneshot" and self.config.oneshot.relative_limit
        chosen = choose(done, floor=accuracy_floor(self.profile, self.config), cost=cost,
                        below_best=drop if relative else None)
        if chosen is None:
            logger.warning("no trial completed: nothing to pick")
            return None
        if not chosen[1]:
            logger.warning("no student met max_accuracy_drop=%s in its trial; fine-tuning %s "
                           "(trial %d)", drop, "the cheapest within it of the most accurate"
                           if relative else "the most accurate one", chosen[0].number)
        pick, student = bisect(chosen[0], done, tune=self._tune, finetunes=self.config.finetunes,
                               cost=cost)
        if self.config.method == "oneshot" and self.config.oneshot.finetune_front:
            front = self._finetune_front(done, pick, cost=cost)
            finetuned = pick.finetuned + tuple(entry for entry, _, _ in front)
            # every front member is cheaper than the pick: one that met the limit after its
            # own fine-tune is the cheaper answer (the pick is the cheapest fine-tuned
            # student within the limit, as the bisection's)
            met = [(p, m) for _, p, m in front if p.meets_constraints]
            if met:
                by_number = {r.number: r for r in done}
                new, student = min(met, key=lambda t: (cost_of(by_number[t[0].trial], cost),
                                                       t[0].macs))
                logger.info("front member trial %d met the limit after its fine-tune (%.4f) and "
                            "is cheaper than trial %d: it is the pick", new.trial,
                            new.val_accuracy, pick.trial)
                pick = new
            pick = dataclasses.replace(pick, finetuned=finetuned)
        # Only the pick is measured on the test set, once: the other students fine-tuned
        # were judged on validation alone.
        if self.test is not None:
            pick = dataclasses.replace(pick, test_accuracy=evaluate(student, self.test))
        save_student(self.out / "best", student, pick.arch, self.space,
                     derive_kwargs=self.config.space.derive_kwargs(), trial=pick.trial)
        return pick, student

    def _finetune_front(self, done: Sequence[TrialRecord], pick: Pick, *, cost: str,
                        ) -> list[tuple[dict[str, Any], Pick, nn.Module]]:
        """``oneshot.finetune_front``: front members cheaper than the pick, down to the
        supernet's smallest trained student (:func:`protege.search.pick.spread_front`),
        each fine-tuned from its supernet weights for ``oneshot.front_epochs``, scored on
        validation and saved in ``trial-<n>/``; returned as ``Pick.finetuned`` entries,
        each with what it would be as the pick and its module."""
        settings = self.config.oneshot
        by_number = {r.number: r for r in done}
        tuned = {f["trial"] for f in pick.finetuned}
        smallest = float(((self.supernet or {}).get("macs") or {}).get("smallest", 0.0))
        low = smallest if cost == "macs" else 0.0
        members = spread_front([r for r in done if r.number not in tuned],
                               k=settings.finetune_front, low=low,
                               high=cost_of(by_number[pick.trial], cost), cost=cost)
        epochs = self.config.front_epochs
        logger.info("fine-tuning %d front members for %d epochs each: trials %s", len(members),
                    epochs, ", ".join(str(r.number) for r in members))
        entries: list[tuple[dict[str, Any], Pick, nn.Module]] = []
        for record in members:
            tuned_pick, module = self._tune(record, epochs=epochs)
            folder = self.out / f"trial-{record.number}"
            save_student(folder, module, record.arch, self.space,
                         derive_kwargs=self.config.space.derive_kwargs(), trial=record.number)
            write_json(folder / "summary.json", dataclasses.asdict(tuned_pick))
            entries.append(({"trial": record.number, "macs": tuned_pick.macs,
                             "search_accuracy": tuned_pick.search_accuracy,
                             "val_accuracy": tuned_pick.val_accuracy,
                             "meets": tuned_pick.meets_constraints,
                             "seconds": tuned_pick.finetune_seconds, "epochs": epochs,
                             "front": True}, tuned_pick, module))
        return entries

    def _pick_rung(self) -> tuple[Pick, nn.Module] | None:
        """``method: rungs``'s pick: chosen among the students at the highest rung reached;
        when that is below the top (the study was stopped early), the chosen one is
        trained on to the top rung first."""
        floor = accuracy_floor(self.profile, self.config)
        top = len(self.config.ladder) - 1
        done = [r for r in self.trials if r.trained and r.rungs]
        if not done:
            logger.warning("no trial completed: nothing to pick")
            return None
        reached = max(r.rung or 0 for r in done)
        at = [r for r in done if r.rung == reached]
        chosen = choose(at, floor=floor, cost=pick_cost(self.config.objectives))
        assert chosen is not None
        if reached < top:
            logger.warning("no student reached the top rung %d; training trial %d on from "
                           "rung %d", top, chosen[0].number, reached)
        pick, student = self._tune_rung(chosen[0], test=True, why=(
            f"the pick: the study stopped before any student reached rung {top}; the "
            "smallest within the limit at the highest rung reached, else the most accurate"))
        if reached == top:
            pick = dataclasses.replace(pick, finetuned=tuple(
                {"trial": r.number, "macs": r.macs,
                 "search_accuracy": r.rungs[-2] if len(r.rungs) > 1 else None,
                 "val_accuracy": r.accuracy, "meets": (r.accuracy or 0.0) >= floor,
                 "seconds": None} for r in at))
        save_student(self.out / "best", student, pick.arch, self.space,
                     derive_kwargs=self.config.space.derive_kwargs(), trial=pick.trial)
        return pick, student

    def _tune_rung(self, record: TrialRecord, *, test: bool,
                   why: str) -> tuple[Pick, nn.Module]:
        """``method: rungs``: ``record``'s student at the top rung (trained on to it from
        the highest rung it reached, if it is not there), scored on validation and, with
        ``test``, on the test data. Never trained again from the teacher."""
        rungs = self.rung_study
        assert rungs is not None
        top = len(self.config.ladder) - 1
        for rung in range((record.rung or 0) + 1, top + 1):
            if run_promotion(rungs, self.evaluator, record, rung=rung,
                             checkpoints=self.checkpoints, reason=why) != Outcome.TRAINED:
                break  # it stays at the rung it reached (the reason is on the trial)
            record = next(r for r in self.trials if r.number == record.number)
        student, _ = load_checkpoint(
            checkpoint_path(self.checkpoints, record.number, record.rung or 0), self.space,
            record.arch)
        student = student.eval()
        val_accuracy = evaluate(student, self.val)
        seconds = 0.0
        for t in rungs.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get(attrs.CLAIM) == [record.number, record.rung]:
                seconds = float(t.user_attrs.get(attrs.TRAIN_SECONDS) or 0.0)
        pick = Pick(
            trial=record.number, arch=record.arch, macs=record.macs or 0,
            params=record.params or 0,
            search_accuracy=record.rungs[-2] if len(record.rungs) > 1 else record.rungs[0],
            val_accuracy=val_accuracy,
            test_accuracy=evaluate(student, self.test) if test and self.test is not None
            else None,
            meets_constraints=val_accuracy >= accuracy_floor(self.profile, self.config),
            finetune_seconds=round(seconds, 3))
        return pick, student

    def finetune(self, number: int) -> tuple[Path, nn.Module]:
        """Trial ``number``'s student fine-tuned like the pick, saved in ``trial-<number>/``.

        The pick's own folder (``best/``) is returned for the pick's trial, and a trial
        fine-tuned before is loaded, not trained again. With ``method: rungs`` the
        student is trained on to the top rung from the highest it reached (there: as is).

        Raises:
            ValueError: If the study has no such trial, or it never trained.
        """
        from protege.search.export import load_student
        from protege.search.runfolder import load_run

        summary = load_run(self.out).pick if (self.out / "config.yaml").is_file() else None
        folder = self.out / ("best" if summary is not None and summary.trial == number
                             else f"trial-{number}")
        if (folder / "arch.json").is_file() and (folder / "student.pt").is_file():
            return folder, load_student(self.teacher, folder / "arch.json", folder / "student.pt")
        record = next((r for r in self.trials if r.number == number), None)
        if record is None:
            raise ValueError(f"{self.out}: no trial {number} (the study has "
                             f"{len(self.trials)} trials)")
        if not record.arch or not record.costs()["macs"]:
            raise ValueError(f"{self.out}: trial {number} built no student ({record.outcome}: "
                             f"{record.reason})")
        if self.rung_study is not None and record.rungs:  # the top rung is the fine-tune
            pick, student = self._tune_rung(record, test=True, why="asked for by name")
        else:  # asked for by name: measured on test
            self._ready_supernet(train=False)
            pick, student = self._tune(record, test=True)
        save_student(folder, student, record.arch, self.space,
                     derive_kwargs=self.config.space.derive_kwargs(), trial=number)
        write_json(folder / "summary.json", dataclasses.asdict(pick))
        return folder, student

    def export(self, student: nn.Module, folder: Path | None = None) -> dict[str, Any]:
        """Write ``student.onnx`` of ``student`` (default folder: ``best/``), checked against
        PyTorch on validation inputs; returns what was checked, or why there is no file."""
        return export_pick_onnx(folder or self.out / "best", student, self.space.example_input,
                                check_inputs=self.val.tensors[0][:256])

    def _front_member(self, record: TrialRecord) -> dict[str, Any]:
        member: dict[str, Any] = {"trial": record.number, "arch": record.arch,
                                  "accuracy": record.accuracy, "macs": record.macs,
                                  "params": record.params}
        # Measured on every front member (an export, a quantisation for int8, then the timing
        # protocol; not the "few ms" of a forward pass) for the report; next to the
        # predicted latency, when there is one, so the predictor can be judged on the front.
        settings = self.config.latency.resolve()
        stats = measure_latency_stats(self.space.materialize(record.arch),
                                      self.space.example_input, runtime=settings.runtime,
                                      precision=settings.precision,
                                      batch_size=settings.batch_size, threads=settings.threads)
        if record.latency_ms is not None:
            member.update(latency_ms_predicted=record.latency_ms)
        member.update(latency_ms_measured=round(stats.ms, 5),
                      latency_spread=round(stats.spread, 4),
                      latency_repeatability=round(stats.repeatability, 4),
                      latency_usable=stats.usable, latency_runtime=stats.runtime,
                      latency_precision=stats.precision, latency_batch=stats.batch_size,
                      latency_threads=stats.threads, latency_machine=stats.machine)
        return member

    def _margin(self, student: nn.Module) -> dict[str, float] | None:
        """How sure the pick is (:func:`protege.search.pick.validation_margin`); None, logged,
        where it cannot be computed (a report's figure must never cost the run its pick)."""
        try:
            return validation_margin(student, self.teacher, self.val,
                                     max_drop=self.config.constraints.max_accuracy_drop)
        except Exception as exc:
            logger.warning("could not compare the pick with the teacher: %s", exc)
            return None

    def finish(self) -> SearchResult:
        """The end of a run: wait for other workers' trials, measure the front, pick and
        fine-tune, export ONNX, write ``pareto.json``, ``summary.json`` and the report."""
        self._wait_for_workers()
        self._ready_supernet(train=False)
        records = list(self.trials)
        write_records(self.out / "trials.jsonl", records)
        profile = self.profile
        if profile.latency_ms is None:  # the report plots accuracy against latency too
            profile = dataclasses.replace(
                profile, latency_ms=_cpu_latency(self.teacher, self.space.example_input,
                                                 self.config.latency.resolve()))
        front = list(self.front)
        volume = self.hypervolume
        members = [self._front_member(r) for r in front]
        summary: dict[str, Any] = {
            "teacher": dataclasses.asdict(profile),
            "trials": {kind.value: sum(r.outcome == kind for r in records)
                       for kind in Outcome if kind != Outcome.RUNNING},
            "hypervolume": volume,
            **({"hypervolume_by_rung": self.hypervolume_by_rung(),
                "ladder": list(self.config.ladder)} if self.rung_study is not None else {}),
            **({"supernet": self.supernet} if self.supernet is not None else {}),
            "hypervolume_reference": {"accuracy": profile.chance,
                                      **{name: 1.0 for name in self.config.objectives[1:]}},
            "pick": None,
            "provenance": provenance(self.config.to_dict()),
        }
        chosen = self.pick()
        pick, student = chosen if chosen is not None else (None, None)
        # a front member fine-tuned for the pick or the front: its accuracy after it, and
        # where the student is saved (the bisection's other students are not kept)
        by_trial = {m["trial"]: m for m in members}
        for f in pick.finetuned if pick is not None else ():
            folder = ("best" if pick is not None and f["trial"] == pick.trial else
                      f"trial-{f['trial']}" if f.get("front") else None)
            if f["trial"] in by_trial:
                by_trial[f["trial"]].update(finetuned_val_accuracy=f["val_accuracy"],
                                            saved_in=folder)
        write_json(self.out / "pareto.json", members)
        if pick is not None and student is not None:
            summary["pick"] = dataclasses.asdict(pick) | {
                "macs_ratio": pick.macs / profile.macs,
                "accuracy_drop": profile.val_accuracy - pick.val_accuracy,
                "latency_ms": _cpu_latency(student, self.space.example_input,
                                           self.config.latency.resolve()),
                "val_margin": self._margin(student),
            }
            summary["onnx"] = self.export(student)
        write_json(self.out / "summary.json", summary)
        write_report(self.out)
        return SearchResult(out=self.out, teacher=profile, trials=tuple(records),
                            front=tuple(front), hypervolume=volume, pick=pick, student=student)


