"""Stages 1-4 of the data flow, and the one call that runs them all.

:func:`create_study` checks the input and profiles the teacher, derives the space,
builds the estimators (limits, latency predictor), opens the storage and caches the
teacher's outputs, then hands a :class:`~protege.search.Study` over; :func:`search`
runs it (``optimize``) and finishes it (``finish``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.study import StudyDirection
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from protege.common import atomic_write
from protege.distill import as_tensors, cache_teacher_outputs
from protege.estimators import LatencyPredictor, TorchLatencyPredictor, measure_latency
from protege.provenance import provenance
from protege.search import _attrs as attrs
from protege.search._config import Config
from protege.search._profile import (
    TeacherProfile,
    check_data,
    check_feasible,
    check_study,
    check_teacher,
    profile_teacher,
    space_key,
)
from protege.search._rules import CurveRule, GainRule, PredictorRule, TrialRule
from protege.search._rungs import enqueue_ladder
from protege.search._storage import (
    fail_dead_trials,
    open_storage,
    storage_errors,
    warn_if_shared_sqlite,
    worker_id,
)
from protege.search._strategies import make_sampler
from protege.search._study import SearchResult, Study, TrialCallback
from protege.search._trial import Limits, StudentEvaluator
from protege.spaces import SearchSpace, derive

__all__ = ["create_study", "search"]

logger = logging.getLogger(__name__)

Data = Dataset | DataLoader


def _tensors(data: Data | None, what: str) -> TensorDataset | None:
    return None if data is None else TensorDataset(*as_tensors(data, what=what))


def _derive(teacher: nn.Module, example_input: torch.Tensor, config: Config) -> SearchSpace:
    """The search space; a teacher that cannot be traced is a ``ValueError`` naming where."""
    try:
        return derive(teacher, example_input, level=config.level, **config.space.derive_kwargs())
    except RuntimeError as exc:
        raise ValueError(f"cannot derive a search space from the teacher: {exc}; protege runs "
                         "the teacher once with gradients on to find its layers, so its forward "
                         "must work then (no .numpy() or in-place edits of parameters)") from exc


def _rules(config: Config, profile: TeacherProfile) -> tuple[TrialRule, ...]:
    if config.method != "trials":  # the ladder's promotion, or a supernet's scoring, does
        return ()                  # what the rules did
    rules: list[TrialRule] = []
    settings = config.rules
    if settings.gain:
        costs = profile.costs()
        rules.append(GainRule(teacher_costs={n: costs[n] for n in config.objectives[1:]},
                              chance=profile.chance, min_gain=settings.min_gain,
                              margin=settings.margin, min_trials=settings.min_trials))
    if settings.predictor:
        rules.append(PredictorRule(min_trials=settings.predictor_min_trials,
                                   threshold=settings.predictor_threshold, seed=config.seed))
    if settings.curve:
        rules.append(CurveRule(min_trials=settings.min_trials, margin=settings.margin))
    return tuple(rules)


def _sampler_seed(config: Config, existing: int, *, worker: bool) -> int:
    """The sampler's seed: the config's for a new study; for a resumed or joined one, a
    seed mixed with how many trials exist (and the worker), so a resumed sampler goes
    on instead of proposing its first students again. QMC keeps its seed: it finds its
    place in the sequence from the study itself."""
    if (existing == 0 and not worker) or config.strategy == "qmc":
        return config.seed
    salt = f"{config.seed}:{existing}:{worker_id() if worker else ''}"
    return zlib.crc32(salt.encode()) % (2**31)


def _open_optuna(config: Config, out: Path, *,
                 worker: bool) -> tuple[optuna.Study, optuna.Study | None]:
    """Create or load the Optuna study (and, for ``method: rungs``, the promotions' study
    beside it); trials left running by a dead process are failed.

    Raises:
        StorageError: If the storage cannot be opened or is locked by another writer.
    """
    costs = len(config.objectives) - 1
    with storage_errors(config.storage):
        storage = open_storage(config.storage, out)
        study = optuna.create_study(
            storage=storage, study_name=attrs.STUDY_NAME,
            directions=[StudyDirection.MAXIMIZE] + [StudyDirection.MINIMIZE] * costs,
            load_if_exists=True,
        )
        # The sampler's seed depends on what the study holds: set once it is open.
        seed = _sampler_seed(config, len(study.get_trials(deepcopy=False)), worker=worker)
        assert config.strategy is not None  # resolved (Config.resolve)
        study.sampler = make_sampler(config.strategy, seed=seed, n_trials=config.trials)
        fail_dead_trials(study)
        if study.metric_names is None:  # the dashboard names the objectives
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(config.objectives))
        rungs = None
        if config.method == "rungs":  # never sampled from: a random sampler asks nothing
            rungs = optuna.create_study(storage=storage, study_name=attrs.RUNGS_STUDY_NAME,
                                        direction=StudyDirection.MAXIMIZE, load_if_exists=True,
                                        sampler=optuna.samplers.RandomSampler(seed=config.seed))
            fail_dead_trials(rungs)
    if worker:
        warn_if_shared_sqlite(config.storage)
    return study, rungs


def _checked_input(teacher: nn.Module, example_input: torch.Tensor, *, train: Data, val: Data,
                   test: Data | None) -> tuple[int, TensorDataset, TensorDataset,
                                               TensorDataset | None]:
    """Stage 1a: the teacher's class count and the data as tensors, every check passed."""
    classes = check_teacher(teacher, example_input)
    train_data = _tensors(train, "training data")
    val_data = _tensors(val, "validation data")
    test_data = _tensors(test, "test data")
    assert train_data is not None and val_data is not None
    check_data(classes, example_input, train=train_data, val=val_data, test=test_data)
    return classes, train_data, val_data, test_data


def _estimators(teacher: nn.Module, example_input: torch.Tensor, space: SearchSpace,
                profile: TeacherProfile, config: Config,
                ) -> tuple[Limits, LatencyPredictor | TorchLatencyPredictor | None,
                           TeacherProfile]:
    """Stage 3: the absolute limits and, when latency matters, its predictor (and the
    teacher's measured latency); even the smallest student must meet the limits."""
    limits = Limits(*config.constraints.resolve(profile.macs, profile.params),
                    max_latency_ms=config.constraints.max_latency_ms or float("inf"))
    latency = None
    if "latency" in config.objectives or config.constraints.max_latency_ms is not None:
        settings = config.latency.resolve()
        latency = LatencyPredictor.for_space(
            space, example_input, runtime=settings.runtime, precision=settings.precision,
            batch_size=settings.batch_size, threads=settings.threads, seed=config.seed)
        measured = measure_latency(teacher, example_input, runtime=settings.runtime,
                                   precision=settings.precision,
                                   batch_size=settings.batch_size, threads=settings.threads)
        predicted = float(latency.predict(space.largest()))
        if math.isnan(measured):  # too noisy to measure here: the report needs a figure
            measured = predicted
            logger.warning("teacher latency taken from the predictor: %.4g ms", measured)
        profile = dataclasses.replace(profile, latency_ms=measured,
                                      latency_predicted_ms=predicted)
    check_feasible(space, example_input, limits, latency, teacher_macs=profile.macs,
                   teacher_params=profile.params)
    return limits, latency, profile


def _open_storage(config: Config, out: Path, *, space: SearchSpace, profile: TeacherProfile,
                  worker: bool, source: dict[str, Any] | None,
                  ) -> tuple[optuna.Study, optuna.Study | None]:
    """Stage 4: the study in its storage (refused if made for another space), and the
    run folder's ``config.yaml``. The study lives with the driver on every backend."""
    if config.storage is None:
        out.mkdir(parents=True, exist_ok=True)  # the default storage lives in it
    optuna_study, rung_study = _open_optuna(config, out, worker=worker)
    check_study(optuna_study, key=space_key(space, config.objectives), config=config,
                where=config.storage or str(out / "study.db"))
    out.mkdir(parents=True, exist_ok=True)
    if not worker:
        if config.warm_start and not optuna_study.get_trials(deepcopy=False):
            count = enqueue_ladder(optuna_study, space)
            logger.info("enqueued the uniform ladder: %d students", count)
        optuna_study.set_user_attr(attrs.TEACHER, dataclasses.asdict(profile))
        with atomic_write(out / "config.yaml") as handle:
            yaml.safe_dump({**(source or {}), **config.to_dict()}, handle, sort_keys=False)
    return optuna_study, rung_study


def create_study(teacher: nn.Module, *, train: Data, val: Data, example_input: torch.Tensor,
                 test: Data | None = None, config: Config | None = None,
                 out: str | Path = "runs/search", accelerator: str = "cpu",
                 worker: bool = False, source: dict[str, Any] | None = None) -> Study:
    """Open (or resume) a search of students of ``teacher``: stages 1-3 of the data flow.

    Checks the input before anything is written, profiles the teacher, derives the
    space, builds the limits and the latency predictor, opens the storage (SQLite
    ``study.db`` in ``out`` unless ``config.storage`` names another), writes
    ``config.yaml`` and caches the teacher's outputs on ``train`` in ``out/cache``.
    An existing study in ``out`` is resumed: its trials are kept.

    Args:
        teacher: The trained classifier: maps ``example_input`` to (batch, classes) logits.
        train: Training data yielding ``(input, label)``.
        val: Validation data: every trial's accuracy and the accuracy limit use it.
        example_input: A batch the teacher accepts (shape and dtype are kept).
        test: Held-out data, used only for the pick's final accuracy.
        config: The experiment (default ``Config()``); resolved here.
        out: The run folder.
        accelerator: ``cpu``, ``gpu`` or ``auto``: where students train.
        worker: Join a study that another process owns (a shared ``config.storage``):
            run trials, never write ``config.yaml`` or pick.
        source: Keys written beside the config in ``config.yaml`` that say how to
            rebuild the teacher and data (the CLI's ``task:``, ``teacher:``, ``data:``).

    Raises:
        TypeError, ValueError: If the teacher, the data or the limits cannot work (one
            line naming the problem; nothing is written).
        StorageError: If the storage cannot be used.
    """
    config = (config or Config()).resolve()
    out = Path(out)
    # Everything that can be wrong with the input is found before the run folder is
    # touched: a failed start leaves no half-written run (and loses no earlier one).
    classes, train_data, val_data, test_data = _checked_input(
        teacher, example_input, train=train, val=val, test=test)
    if worker and config.backend == "ray":
        raise ValueError("backend: ray schedules its own workers; use `protege run` "
                         "with ray.address instead of `protege worker`")
    profile = profile_teacher(teacher, example_input, val=val_data, test=test_data,
                              classes=classes)
    space = _derive(teacher, example_input, config)
    limits, latency, profile = _estimators(teacher, example_input, space, profile, config)
    optuna_study, rung_study = _open_storage(config, out, space=space, profile=profile,
                                             worker=worker, source=source)
    outputs = cache_teacher_outputs(teacher, train_data, cache_dir=out / "cache",
                                    config=config.distill)
    evaluator = StudentEvaluator(space=space, outputs=outputs, val=val_data,
                                 example_input=example_input, config=config, limits=limits,
                                 accelerator=accelerator, latency=latency, teacher=teacher,
                                 rules=_rules(config, profile),
                                 provenance=provenance(config.to_dict()))
    logger.info("teacher: %d MACs, %d params, val accuracy %.4f",
                profile.macs, profile.params, profile.val_accuracy)
    return Study(out=out, profile=profile, evaluator=evaluator, test=test_data,
                 optuna_study=optuna_study, worker=worker, rung_study=rung_study)


def search(teacher: nn.Module, *, train: Data, val: Data, example_input: torch.Tensor,
           test: Data | None = None, config: Config | None = None,
           out: str | Path = "runs/search", callbacks: Sequence[TrialCallback] = (),
           accelerator: str = "cpu") -> SearchResult:
    """Find the smallest student of ``teacher`` that meets ``config.constraints``.

    :func:`create_study`, :meth:`Study.optimize` until the config's ``n_trials`` (or
    ``timeout``), then :meth:`Study.finish`. Running again with the same ``out``
    resumes the study: finished trials are kept and only the missing ones run.

    Args:
        teacher: The trained classifier.
        train: Training data yielding ``(input, label)``; the teacher's outputs on
            it are computed once and cached in the run folder.
        val: Validation data: every trial's accuracy and the accuracy limit use it.
        example_input: A batch the teacher accepts, for tracing and counting MACs.
        test: Held-out data, used only to report the pick's final accuracy.
        config: The experiment: space level, strategy, trials, limits, distillation,
            backend (default ``Config()``).
        out: The run folder (``config.yaml``, ``study.db``, ``trials.jsonl``,
            ``pareto.json``, ``summary.json``, ``report.html``, ``best/``).
        callbacks: Called with the study and each trial's record as it finishes.
        accelerator: ``cpu``, ``gpu`` or ``auto``.

    Returns:
        The trials, the Pareto front, its hypervolume and the fine-tuned pick.

    Raises:
        TypeError, ValueError: If the input cannot work (nothing is written).
        TooManyFailures: If most of the first trials failed.
    """
    study = create_study(teacher, train=train, val=val, example_input=example_input,
                         test=test, config=config, out=out, accelerator=accelerator)
    study.optimize(callbacks=callbacks)
    return study.finish()


