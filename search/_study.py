"""One search study: profile the teacher, run the trials, then pick, fine-tune and save."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.study import StudyDirection
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from protege._io import atomic_write
from protege.distill import TeacherOutputs, as_tensors, cache_teacher_outputs, evaluate
from protege.distill import train_student as _train_student
from protege.estimators import (
    LatencyPredictor,
    count_macs,
    measure_latency,
    measure_latency_stats,
)
from protege.search._checks import (
    check_data,
    check_feasible,
    check_study,
    check_teacher,
    space_key,
)
from protege.search._config import Config
from protege.search._export import save_student, write_json
from protege.search._objective import (
    SKIPPED_ATTR,
    Limits,
    StudentEvaluator,
    TrialFunction,
    device_of,
)
from protege.search._onnx import export_pick_onnx
from protege.search._pareto import pareto_indices, scaled_hypervolume
from protege.search._pruning import CurveRule, GainRule, PredictorRule, PruningRule
from protege.search._records import Pick, TeacherProfile, TrialRecord, load_records
from protege.search._report import write_report
from protege.search._storage import (
    fail_dead_trials,
    open_storage,
    storage_errors,
    warn_if_shared_sqlite,
)
from protege.search._strategies import make_sampler
from protege.spaces import SearchSpace, derive

__all__ = ["SearchResult", "TrialCallback", "run_search"]

logger = logging.getLogger(__name__)

STUDY_NAME = "protege"
TrialCallback = Callable[[TrialRecord], None]
"""Called with the record of every trial as it finishes."""


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The outcome of a study.

    Attributes:
        out: The run folder.
        teacher: The teacher's cost and accuracy.
        trials: Every trial, by number.
        front: Pareto-optimal completed trials (accuracy up, costs down), by cost.
        hypervolume: Volume the front dominates over every objective, each cost
            divided by the teacher's, against the reference (chance accuracy, the
            teacher's costs).
        pick: The chosen student after its final distillation, or None when no
            trial completed (or this process only ran trials).
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


def _write_records(path: Path, records: Sequence[TrialRecord]) -> None:
    with atomic_write(path) as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict()) + "\n")


def _profile(teacher: nn.Module, example_input: torch.Tensor, val: TensorDataset,
             test: TensorDataset | None, *, classes: int) -> TeacherProfile:
    macs, params = count_macs(teacher, example_input)
    return TeacherProfile(
        macs=macs, params=params, val_accuracy=evaluate(teacher, val),
        test_accuracy=evaluate(teacher, test) if test is not None else None, classes=classes,
    )


def _derive(teacher: nn.Module, example_input: torch.Tensor, config: Config) -> SearchSpace:
    """The search space; a teacher that cannot be traced is a ``ValueError`` naming where."""
    try:
        return derive(teacher, example_input, level=config.level, **config.space.derive_kwargs())
    except RuntimeError as exc:
        raise ValueError(f"cannot derive a search space from the teacher: {exc}; protege runs "
                         "the teacher once with gradients on to find its layers, so its forward "
                         "must work then (no .numpy() or in-place edits of parameters)") from exc


def _to_tensor_dataset(data: Dataset | DataLoader | None, what: str) -> TensorDataset | None:
    if data is None:
        return None
    return TensorDataset(*as_tensors(data, what=what))


def _active(study: optuna.Study) -> int:
    """Trials that hold a slot of the budget: all but the failed ones."""
    return sum(t.state != TrialState.FAIL for t in study.get_trials(deepcopy=False))


def _run_trials(study: optuna.Study, objective: TrialFunction, *, config: Config,
                after_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None],
                deadline: float | None = None) -> bool:
    """Run trials until the study holds ``n_trials`` finished ones or time is up.

    One trial per ``optimize`` call keeps the budget exact when several workers
    share the storage; a failed trial's slot is retried, and so is the slot of a
    trial whose process died.

    Returns:
        Whether it stopped because ``deadline`` (``time.monotonic``) passed.
    """
    attempts = failures = 0
    mine: list[optuna.trial.FrozenTrial] = []

    def remember(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        mine.append(trial)
        after_trial(study, trial)

    while True:
        with storage_errors(config.storage):
            fail_dead_trials(study)
            if _active(study) >= config.n_trials:
                return False
            if deadline is not None and time.monotonic() > deadline:
                logger.info("timeout of %ss reached", config.timeout)
                return True
            study.optimize(objective, n_trials=1, callbacks=[remember], catch=(Exception,),
                           gc_after_trial=False)
        last = mine.pop() if mine else None
        if last is not None and last.user_attrs.get(SKIPPED_ATTR):
            return False
        attempts += 1
        failures += last is None or last.state == TrialState.FAIL
        if attempts >= 5 and failures > config.pruning.max_failed_fraction * attempts:
            error = last.user_attrs.get("error") if last is not None else None
            raise TooManyFailures(
                f"{failures} of the {attempts} trials run so far failed (last: "
                f"{error or 'unknown error'}); stopping early instead of "
                "spending the budget. Fix the cause (trials.jsonl has every reason) and run the "
                "same command again to resume.")


def open_study(config: Config, out: Path, *, owner: bool) -> optuna.Study:
    """Create or load the study; trials left running by a dead process are marked failed.

    Raises:
        StorageError: If the storage cannot be opened or is locked by another writer.
    """
    costs = len(config.objectives) - 1
    with storage_errors(config.storage):
        study = optuna.create_study(
            storage=open_storage(config.storage, out), study_name=STUDY_NAME,
            directions=[StudyDirection.MAXIMIZE] + [StudyDirection.MINIMIZE] * costs,
            sampler=make_sampler(config.strategy, seed=config.seed, n_trials=config.n_trials),
            load_if_exists=True,
        )
        fail_dead_trials(study)
        if study.metric_names is None:  # the dashboard names the objectives
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(config.objectives))
    if not owner:
        warn_if_shared_sqlite(config.storage)
    return study


def run_search(
    teacher: nn.Module,
    *,
    train: Dataset | DataLoader,
    val: Dataset | DataLoader,
    example_input: torch.Tensor,
    config: Config,
    out: str | Path,
    test: Dataset | DataLoader | None = None,
    callbacks: Sequence[TrialCallback] = (),
    accelerator: str = "cpu",
    worker: bool = False,
) -> SearchResult:
    """Search students of ``teacher`` and return the front and the pick.

    The run folder ``out`` receives ``config.yaml``, the Optuna storage
    ``study.db`` (unless ``config.storage`` names another), ``trials.jsonl``,
    ``pareto.json``, ``summary.json`` and ``best/`` (``arch.json``,
    ``student.pt``). Running again with the same ``out`` resumes the study:
    finished trials are kept and only the missing ones run.

    Args:
        worker: Join a study that another process owns: run trials until the
            budget is spent, then return without picking (the owner picks).
    """
    # Everything that can be wrong with the input is found before the run folder is
    # touched: a failed start leaves no half-written run (and loses no earlier one).
    classes = check_teacher(teacher, example_input)
    out = Path(out)
    train_data = _to_tensor_dataset(train, "training data")
    val_data = _to_tensor_dataset(val, "validation data")
    test_data = _to_tensor_dataset(test, "test data")
    assert train_data is not None and val_data is not None
    check_data(classes, example_input, train=train_data, val=val_data, test=test_data)
    if worker and config.backend == "ray":
        raise ValueError("backend: ray schedules its own workers; use `protege run` "
                         "with ray.address instead of `protege worker`")
    space = _derive(teacher, example_input, config)
    profile = _profile(teacher, example_input, val_data, test_data, classes=classes)
    limits = Limits(*config.constraints.resolve(profile.macs, profile.params),
                    max_latency_ms=config.constraints.max_latency_ms or float("inf"))
    latency = None
    if "latency" in config.objectives or config.constraints.max_latency_ms is not None:
        latency = LatencyPredictor.for_space(space, example_input, seed=config.seed)
        profile = dataclasses.replace(profile, latency_ms=measure_latency(teacher, example_input))
    check_feasible(space, example_input, limits, latency, teacher_macs=profile.macs,
                   teacher_params=profile.params)
    study = None
    if config.backend != "ray":
        if config.storage is None:
            out.mkdir(parents=True, exist_ok=True)  # the default storage lives in it
        study = open_study(config, out, owner=not worker)
        check_study(study, key=space_key(space, config.objectives), config=config,
                    where=config.storage or str(out / "study.db"))
    out.mkdir(parents=True, exist_ok=True)
    if not worker:
        with atomic_write(out / "config.yaml") as handle:
            yaml.safe_dump(config.to_dict(), handle, sort_keys=False)
    outputs = cache_teacher_outputs(teacher, train_data, cache_dir=out / "cache",
                                    config=config.distill)
    evaluator = StudentEvaluator(space=space, outputs=outputs, val=val_data,
                                 example_input=example_input, config=config, limits=limits,
                                 accelerator=accelerator, trainer=_train_student,
                                 latency=latency, teacher=teacher)
    logger.info("teacher: %d MACs, %d params, val accuracy %.4f",
                profile.macs, profile.params, profile.val_accuracy)

    finish = functools.partial(_finish, out=out, profile=profile, space=space, outputs=outputs,
                               val=val_data, test=test_data, config=config,
                               accelerator=accelerator, teacher=teacher)
    if study is None:
        from protege.search._ray import run_ray

        records = run_ray(evaluator, config=config, out=out)
        _write_records(out / "trials.jsonl", records)
        for record in records:
            for callback in callbacks:
                callback(record)
        return finish(records=records)

    if not worker:
        study.set_user_attr("teacher", dataclasses.asdict(profile))
    rules: list[PruningRule] = []
    if config.pruning.gain:
        teacher_costs = profile.costs()
        rules.append(GainRule(teacher_costs={n: teacher_costs[n] for n in config.objectives[1:]},
                              chance=profile.chance, min_gain=config.pruning.min_gain,
                              margin=config.pruning.margin,
                              min_trials=config.pruning.min_trials))
    if config.pruning.predictor:
        rules.append(PredictorRule(min_trials=config.pruning.predictor_min_trials,
                                   threshold=config.pruning.predictor_threshold,
                                   seed=config.seed))
    if config.pruning.curve:
        rules.append(CurveRule(min_trials=config.pruning.min_trials,
                               margin=config.pruning.margin))
    objective = TrialFunction(evaluator, rules=tuple(rules))

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        records = load_records(study)
        _write_records(out / "trials.jsonl", records)
        record = next((r for r in records if r.number == trial.number), None)
        if record is None:  # skipped: the budget was spent by other workers meanwhile
            return
        for callback in callbacks:
            callback(record)

    logger.info("study holds %d of %d trials", _active(study), config.n_trials)
    deadline = time.monotonic() + config.timeout if config.timeout is not None else None
    while True:
        timed_out = _run_trials(study, objective, config=config, after_trial=after_trial,
                                deadline=deadline)
        if worker:
            records = load_records(study)
            return SearchResult(out, profile, tuple(records), (), 0.0, None)
        _wait_for_workers(study)
        # A worker that died mid-trial freed its slot: run it here before picking.
        if timed_out or _active(study) >= config.n_trials:
            break
    records = load_records(study)
    _write_records(out / "trials.jsonl", records)
    return finish(records=records)


def _wait_for_workers(study: optuna.Study, *, poll: float = 2.0, limit: float = 600.0) -> None:
    """Let trials that other workers are still running finish before picking."""
    deadline = time.monotonic() + limit
    while True:
        fail_dead_trials(study)
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        if time.monotonic() > deadline:
            logger.warning("%d trials still running after %.0fs; picking without them",
                           len(running), limit)
            return
        logger.info("waiting for %d trials of other workers", len(running))
        time.sleep(poll)


def _choose(records: Sequence[TrialRecord], teacher: TeacherProfile,
            config: Config) -> tuple[TrialRecord, bool] | None:
    """Smallest completed student within the accuracy limit; else the most accurate one."""
    done = [r for r in records if r.state == "complete" and r.accuracy is not None]
    if not done:
        return None
    floor = _floor(teacher, config)
    within = [r for r in done if (r.accuracy or 0.0) >= floor]
    if within:
        return min(within, key=lambda r: (r.macs, -(r.accuracy or 0.0), r.number)), True
    return max(done, key=lambda r: (r.accuracy or 0.0, -(r.macs or 0), -r.number)), False


def _point(record: TrialRecord, config: Config) -> tuple[float, ...]:
    costs = record.costs()
    return (record.accuracy or 0.0, *(float(costs[name] or 0) for name in config.objectives[1:]))


def front_hypervolume(records: Sequence[TrialRecord], teacher: TeacherProfile,
                      objectives: Sequence[str]) -> float:
    """Hypervolume of completed trials over every objective, costs divided by the teacher's.

    The reference point is fixed per task: chance accuracy and the teacher's costs.
    """
    teacher_costs = teacher.costs()
    scale = {n: teacher_costs[n] for n in objectives[1:] if n in teacher_costs}
    points = []
    for r in records:
        costs = r.costs()
        if r.state == "complete" and r.accuracy is not None and \
                all(costs[n] is not None for n in scale):
            points.append((r.accuracy, costs))
    return scaled_hypervolume(points, teacher_costs=scale, chance=teacher.chance)


def _front_member(record: TrialRecord, space: SearchSpace, config: Config) -> dict[str, Any]:
    member: dict[str, Any] = {"trial": record.number, "arch": record.arch,
                              "accuracy": record.accuracy, "macs": record.macs,
                              "params": record.params}
    # Measured on every front (a few ms each) for the report's latency plot; next to the
    # predicted latency, when there is one, so the predictor can be judged on the front.
    stats = measure_latency_stats(space.materialize(record.arch), space.example_input)
    if record.latency_ms is not None:
        member.update(latency_ms_predicted=record.latency_ms)
    member.update(latency_ms_measured=round(stats.median_ms, 5),
                  latency_spread=round(stats.spread, 4))
    return member


def _cpu_latency(model: nn.Module, example_input: torch.Tensor) -> float | None:
    """Latency (ms, batch 1) on this CPU for the report; a model left on a GPU (an online
    teacher) is timed as a CPU copy. None, logged, where it cannot be measured."""
    try:
        if any(p.device.type != "cpu" for p in model.parameters()):
            model = copy.deepcopy(model).cpu()
        return measure_latency(model, example_input.cpu())
    except Exception as exc:  # a report's figure must never cost the run its pick
        logger.warning("could not measure the latency of %s: %s", type(model).__name__, exc)
        return None


def _finish(*, out: Path, records: list[TrialRecord], profile: TeacherProfile,
            space: SearchSpace, outputs: TeacherOutputs, val: TensorDataset,
            test: TensorDataset | None, config: Config, accelerator: str,
            teacher: nn.Module) -> SearchResult:
    if profile.latency_ms is None:  # the report plots accuracy against latency too
        profile = dataclasses.replace(profile,
                                      latency_ms=_cpu_latency(teacher, space.example_input))
    done = [r for r in records if r.state == "complete" and r.duplicate_of is None]
    front = [done[i] for i in pareto_indices([_point(r, config) for r in done])]
    volume = front_hypervolume(done, profile, config.objectives)
    write_json(out / "pareto.json", [_front_member(r, space, config) for r in front])
    summary: dict[str, Any] = {
        "teacher": dataclasses.asdict(profile),
        "trials": {state: sum(r.state == state for r in records)
                   for state in ("complete", "pruned", "failed")},
        "hypervolume": volume,
        "hypervolume_reference": {"accuracy": profile.chance,
                                  **{name: 1.0 for name in config.objectives[1:]}},
        "pick": None,
    }
    chosen = _choose(done, profile, config)
    pick, student = None, None
    if chosen is None:
        logger.warning("no trial completed: nothing to pick")
    else:
        if not chosen[1]:
            logger.warning("no student met max_accuracy_drop=%s in its trial; fine-tuning the "
                           "most accurate one (trial %d)",
                           config.constraints.max_accuracy_drop, chosen[0].number)
        tune = functools.partial(_finetune, floor=_floor(profile, config), space=space,
                                 outputs=outputs, val=val, test=test, config=config,
                                 accelerator=accelerator, teacher=teacher)
        pick, student = _bisect(chosen[0], done, tune=tune, finetunes=config.finetunes)
        save_student(out / "best", student, pick.arch, space,
                     derive_kwargs=config.space.derive_kwargs(), trial=pick.trial)
        summary["pick"] = dataclasses.asdict(pick) | {
            "macs_ratio": pick.macs / profile.macs,
            "accuracy_drop": profile.val_accuracy - pick.val_accuracy,
            "latency_ms": _cpu_latency(student, space.example_input),
        }
        summary["onnx"] = export_pick_onnx(out / "best", student, space.example_input,
                                           check_inputs=val.tensors[0][:256])
    write_json(out / "summary.json", summary)
    write_report(out)
    return SearchResult(out, profile, tuple(records), tuple(front), volume, pick, student)


def _floor(profile: TeacherProfile, config: Config) -> float:
    """The lowest validation accuracy within the accuracy limit."""
    return profile.val_accuracy - config.constraints.max_accuracy_drop - 1e-12


def _bisect(first: TrialRecord, done: Sequence[TrialRecord], *,
            tune: Callable[[TrialRecord], tuple[Pick, nn.Module]],
            finetunes: int) -> tuple[Pick, nn.Module]:
    """Fine-tune ``first``, then, while fine-tunes remain, bisect for the smallest student
    that meets the limit after its own fine-tune, assuming fine-tuned accuracy grows with
    MACs: below ``first`` (among the smaller members of the (accuracy, MACs) front) when
    it meets, above it (among every larger student, by MACs: brief accuracy says little
    about them) when it misses. Returns the smallest that met, else the most accurate.
    """
    macs = first.macs or 0
    smaller = [r for r in done if (r.macs or 0) < macs]
    below = [smaller[i] for i in pareto_indices([(r.accuracy or 0.0, float(r.macs or 0))
                                                 for r in smaller])]  # by MACs, ascending
    above = sorted((r for r in done if (r.macs or 0) > macs), key=lambda r: (r.macs, r.number))
    front = [*below, first, *above]
    at = len(below)
    tried = [tune(first)]
    lo, hi = (0, at) if tried[0][0].meets_constraints else (at + 1, len(front))
    while len(tried) < finetunes and lo < hi:  # the answer lies in front[lo:hi]
        mid = (lo + hi) // 2
        tried.append(tune(front[mid]))
        meets = tried[-1][0].meets_constraints
        logger.info("bisecting the front: trial %d (%d MACs) %s the limit after fine-tuning",
                    front[mid].number, front[mid].macs or 0, "meets" if meets else "misses")
        lo, hi = (lo, mid) if meets else (mid + 1, hi)
    met = [t for t in tried if t[0].meets_constraints]
    best = (min(met, key=lambda t: t[0].macs) if met
            else max(tried, key=lambda t: t[0].val_accuracy))
    finetuned = tuple({"trial": p.trial, "macs": p.macs, "search_accuracy": p.search_accuracy,
                       "val_accuracy": p.val_accuracy, "meets": p.meets_constraints,
                       "seconds": p.finetune_seconds} for p, _ in tried)
    return dataclasses.replace(best[0], finetuned=finetuned), best[1]


def _finetune(record: TrialRecord, *, floor: float, space: SearchSpace, outputs: TeacherOutputs,
              val: TensorDataset, test: TensorDataset | None, config: Config,
              accelerator: str, teacher: nn.Module) -> tuple[Pick, nn.Module]:
    student = space.materialize(record.arch, init=config.init, seed=config.seed + record.number)
    student = student.to(device_of(accelerator))
    final = config.distill.for_finetune()  # all data, no trial step/seconds budget
    logger.info("fine-tuning trial %d for %d epochs", record.number, final.epochs)
    result = _train_student(student, outputs, val, config=final,
                            seed=config.seed, accelerator=accelerator, teacher=teacher,
                            progress=f"fine-tune of trial {record.number}")
    student = student.cpu().eval()
    pick = Pick(
        trial=record.number, arch=record.arch, macs=record.macs or 0, params=record.params or 0,
        search_accuracy=record.accuracy or 0.0, val_accuracy=result.val_accuracy,
        test_accuracy=evaluate(student, test) if test is not None else None,
        meets_constraints=result.val_accuracy >= floor,
        finetune_seconds=round(result.seconds, 3),
    )
    return pick, student
