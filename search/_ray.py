"""The Ray Tune backend: the one trial function, scheduled on a Ray cluster.

The driver keeps protege's Optuna study (the same seeded sampler and storage as the
in-process backend) and serves it to Ray Tune as a searcher: it asks the study for
an architecture, ships it with the records the rules judge against, and tells the
study the :class:`~protege.search._trial.TrialResult` that comes back. Each Ray
trial runs :func:`~protege.search._trial.run_trial`, so limits, reuse of identical
students, the rules and the typed outcomes are those of every other backend; a
rejected student is a rejected record.

``method: rungs`` runs its ladder here too: the driver decides every step by the rule
of the in-process backend (:meth:`~protege.search._study.Study.due_promotion`: a due
promotion first, MO-ASHA over accuracy and costs, else a new student at rung 0), claims
a promotion in the study's storage, and a Ray trial trains the student on from its
checkpoint (:func:`~protege.search._rungs.train_promotion`); Ray's own ASHA is not used.

Nothing a trial of ``method: trials`` or ``oneshot`` needs travels through a file
system: the evaluator (the space, the cached teacher outputs, the validation data) goes
through Ray's object store (``tune.with_parameters``), the architecture and the finished
records through the trial's config, the result through Tune's reported metrics. A
ladder's checkpoints (weights and optimiser state at each rung) live in the run folder,
which its Ray nodes must share with the driver. Ray adds a per-trial
cost (``experiments/results/search.md``): it pays off on a cluster, not for
second-long trials on one machine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from protege.search import _attrs as attrs
from protege.search._records import Outcome, TrialRecord, load_records
from protege.search._rungs import (
    Promotion,
    PromotionResult,
    checkpoint_path,
    claim_promotion,
    tell_promotion,
    train_promotion,
)
from protege.search._storage import worker_id
from protege.search._study import FailureGuard, TooManyFailures, _active
from protege.search._trial import (
    StudentEvaluator,
    TrialResult,
    finished_records,
    run_trial,
    suggest_arch,
    write_result,
)

if TYPE_CHECKING:
    from protege.search._study import Study, TrialCallback

__all__ = ["run_ray"]

logger = logging.getLogger(__name__)

_RESULT = "protege_result"
"""The metric that carries a trial's :class:`TrialResult` (as JSON) back to the driver."""


def _import_ray() -> Any:
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError as exc:
        raise ImportError("backend: ray needs Ray Tune: pip install 'protege[ray]'") from exc
    return ray


def _trainable(params: dict[str, Any], evaluator: StudentEvaluator) -> None:
    """One Ray trial: :func:`run_trial` on the architecture the driver's study asked for,
    or (``method: rungs``) the promotion of a student it names to the next rung."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(evaluator.config.ray.cpus_per_trial)))

    def on_epoch(epoch: int, accuracy: float) -> None:
        tune.report({"accuracy": accuracy, "epoch": epoch + 1})

    checkpoints = Path(params["checkpoints"]) if params.get("checkpoints") else None
    if "promote" in params:
        assert checkpoints is not None
        promoted = train_promotion(evaluator, TrialRecord.from_dict(params["promote"]),
                                   rung=int(params["rung"]), checkpoints=checkpoints,
                                   on_epoch=on_epoch)
        tune.report({"accuracy": promoted.val_accuracy or 0.0,
                     _RESULT: json.dumps(promoted.to_dict())})
        return
    finished = [TrialRecord.from_dict(data) for data in params["finished"]]
    number = int(params["number"])
    result = run_trial(evaluator, params["arch"], number=number, finished=finished,
                       on_epoch=on_epoch, checkpoint=None if checkpoints is None
                       else checkpoint_path(checkpoints, number, 0))
    tune.report({"accuracy": result.accuracy or 0.0, _RESULT: json.dumps(result.to_dict())})


def _searcher_class() -> type:
    from ray.tune.search import Searcher

    class StudySearcher(Searcher):  # type: ignore[misc]
        """Ray Tune's searcher backed by protege's Optuna study (ask / tell)."""

        def __init__(self, study: Study, *, budget: int, deadline: float | None,
                     callbacks: Sequence[TrialCallback]) -> None:
            super().__init__(metric="accuracy", mode="max")
            self.study = study
            self.budget = budget
            self.deadline = deadline
            self.callbacks = callbacks
            self.pending: dict[str, tuple[optuna.Trial, Promotion | None]] = {}
            # method: rungs: the run folder's checkpoints, which every Ray node reads and
            # writes (one machine, or a shared file system)
            self.checkpoints = (str(study.checkpoints.resolve())
                                if study.rung_study is not None else None)
            self.guard = FailureGuard(study.config.rules.max_failed_fraction)
            self.error: TooManyFailures | None = None

        def _active(self, records: Sequence[TrialRecord] | None = None) -> int:
            # as in-process: failed trials and an enqueued queue (the ladder) hold no slot
            if records is None:
                records = load_records(self.study.optuna_study)
            return _active(records)

        def suggest(  # type: ignore[override]  # Tune documents FINISHED, a str
                self, trial_id: str) -> dict[str, Any] | str | None:
            timed_out = self.deadline is not None and time.monotonic() > self.deadline
            ending = self.study.stopped or timed_out or self.error is not None
            records = None
            if not ending and self.study.rung_study is not None:
                # method: rungs: the ladder's rule, as in-process; a promotion due first
                records, due = self.study.due_promotion()  # one read serves the budget too
                if due is not None:
                    return self._promote(trial_id, records, due)
            if ending or self._active(records) >= self.budget:
                # Trials still running may fail and free a slot (or, on a ladder, make a
                # promotion due): wait for them.
                return None if self.pending and not ending else Searcher.FINISHED
            optuna_study = self.study.optuna_study
            trial = optuna_study.ask()
            trial.set_user_attr(attrs.WORKER, worker_id())
            arch = suggest_arch(trial, self.study.space)
            trial.set_user_attr(attrs.ARCH, arch)
            self.pending[trial_id] = (trial, None)
            finished = finished_records(optuna_study.get_trials(deepcopy=False),
                                        before=trial.number)
            # the rules need no provenance: left out, it does not grow every trial's config
            return {"number": trial.number, "arch": arch, "checkpoints": self.checkpoints,
                    "finished": [dataclasses.replace(r, provenance=None).to_dict()
                                 for r in finished]}

        def _promote(self, trial_id: str, records: Sequence[TrialRecord],
                     due: Promotion) -> dict[str, Any] | None:
            assert self.study.rung_study is not None
            trial = claim_promotion(self.study.rung_study, due.student, due.rung, due.reason)
            if trial is None:  # a worker on the same storage took it: ask again later
                return None
            self.pending[trial_id] = (trial, due)
            student = next(r for r in records if r.number == due.student)
            return {"promote": dataclasses.replace(student, provenance=None).to_dict(),
                    "rung": due.rung, "checkpoints": self.checkpoints}

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                              error: bool = False) -> None:
            trial, due = self.pending.pop(trial_id, (None, None))
            if trial is None:
                return
            if due is not None:
                record = self._promoted(trial, due, result)
            else:
                record = self._scored(trial, result, error)
            for callback in self.callbacks:
                callback(self.study, record)
            if self.error is None:
                self.error = self.guard.add(record)

        def _promoted(self, trial: optuna.Trial, due: Promotion,
                      result: dict[str, Any] | None) -> TrialRecord:
            assert self.study.rung_study is not None
            promoted = (PromotionResult.from_dict(json.loads(result[_RESULT]))
                        if result is not None and _RESULT in result
                        else PromotionResult(failure="the Ray trial died (see the Ray logs)"))
            outcome = tell_promotion(self.study.rung_study, trial, promoted,
                                     evaluator=self.study.evaluator)
            return self.study.promoted_record(self.study.trials, due, outcome)

        def _scored(self, trial: optuna.Trial, result: dict[str, Any] | None,
                    error: bool) -> TrialRecord:
            arch = trial.user_attrs.get(attrs.ARCH, {})
            if result is not None and _RESULT in result:
                outcome = TrialResult.from_dict(json.loads(result[_RESULT]))
            elif not error and result is not None and "epoch" in result:
                outcome = TrialResult(outcome=Outcome.STOPPED, arch=arch,
                                      reason=f"asha: stopped after epoch {result['epoch']}")
            else:
                outcome = TrialResult(outcome=Outcome.FAILED, arch=arch,
                                      reason="the Ray trial died (see the Ray logs)")
            evaluator = self.study.evaluator
            write_result(trial, outcome, evaluator)
            if outcome.outcome.completed:
                assert outcome.accuracy is not None
                self.study.optuna_study.tell(
                    trial, list(evaluator.objectives(outcome.accuracy, outcome.costs)))
            else:
                self.study.optuna_study.tell(trial, state=TrialState.FAIL
                                             if outcome.outcome == Outcome.FAILED
                                             else TrialState.PRUNED)
            return outcome.record(trial.number)

    return StudySearcher


def run_ray(study: Study, *, budget: int, deadline: float | None,
            callbacks: Sequence[TrialCallback]) -> None:
    """Run ``study``'s trials under Ray Tune until it holds ``budget`` of them.

    The study's storage is the driver's; a rerun on the same run folder resumes from
    the study (trials a dead driver left running are failed and run again).
    """
    ray = _import_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    config = study.config
    if not ray.is_initialized():
        # No address starts a Ray of its own: without "local", Ray would join whatever
        # cluster /tmp/ray/ray_current_cluster last named, even one long gone.
        ray.init(address=config.ray.address or "local", include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    epochs = config.distill.trial_epochs(len(study.outputs.targets))
    scheduler = (ASHAScheduler(metric="accuracy", mode="max", time_attr="epoch",
                               max_t=epochs, grace_period=1)
                 if config.ray.scheduler == "asha" else FIFOScheduler())
    searcher = _searcher_class()(study, budget=budget, deadline=deadline, callbacks=callbacks)
    trainable = tune.with_resources(tune.with_parameters(_trainable, evaluator=study.evaluator),
                                    {"cpu": config.ray.cpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler, num_samples=-1,
            max_concurrent_trials=config.ray.max_concurrent,
            # A fresh actor per trial costs a process start and the imports (seconds).
            reuse_actors=True),
        run_config=tune.RunConfig(name="ray", storage_path=str(study.out.resolve()),
                                  verbose=0),
    )
    tuner.fit()
    logger.info("Ray Tune finished: the study holds %d trials", len(study.trials))
    if searcher.error is not None:
        raise searcher.error
