"""Run configuration: frozen, keyword-only dataclasses read from YAML with a safe loader.

A config is strict: an unknown key, a value of the wrong type or a value out of
range raises :class:`ConfigError` naming the key, before anything is computed.
Defaults that depend on other keys (trials and epochs by level, the KD temperature
by ``init``) are left as None and filled by one explicit step, :meth:`Config.resolve`,
so a config means the same however it was built.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from protege.common import ConfigError, read_yaml, require
from protege.distill import DistillConfig
from protege.estimators import LatencySettings
from protege.search._strategies import STRATEGIES

__all__ = ["METHODS", "SOURCE_KEYS", "Config", "ConfigError", "Constraints", "OneShotConfig",
           "RayConfig", "RulesConfig", "RungsConfig", "SpaceConfig", "apply_overrides",
           "load_config"]

SOURCE_KEYS = ("task", "teacher", "data")
"""Top-level keys of a run file that say where the teacher and data come from: read by the
CLI and the experiments layer (``protege.experiments``), never by the controller."""

OBJECTIVES = ("accuracy", "macs", "params", "latency")
"""Objectives a study can have: accuracy first (maximised), then the costs (minimised)."""
INITS = ("inherit", "scratch")
METHODS = ("trials", "rungs", "oneshot")
"""How a study spends its compute: ``trials`` gives every sampled student the same brief
distillation, then fine-tunes the pick; ``rungs`` screens students at rung 0 and trains
the promising ones further, rung by rung, up to the fine-tune (:class:`RungsConfig`);
``oneshot`` trains the teacher once as a weight-sharing supernet, scores students as its
slices with no training, then fine-tunes the pick from the supernet's weights
(:class:`OneShotConfig`)."""
LEVEL_TRIALS = {1: 30, 2: 50, 3: 80}
"""Trials a study runs when ``n_trials`` is not given, by space level."""
LEVEL_STUDENTS = {1: 81, 2: 135, 3: 243}
"""Students a ``method: rungs`` study samples when ``n_trials`` is not given, by level:
rung 0 costs a calibration pass, so a ladder screens more students than trials train."""
LEVEL_SCORED = {1: 300, 2: 500, 3: 800}
"""Students a ``method: oneshot`` study scores when ``n_trials`` is not given, by level:
scoring a slice of the trained supernet costs a calibration pass and a validation pass."""
LEVEL_EPOCHS = {1: 4, 2: 5, 3: 6}
"""Epochs of a trial when the config gives no ``distill.epochs``, by space level.

Width cuts of an inherited teacher recover in 3-4 epochs (MNIST-1D, see
``experiments/results/distill.md``); dropped blocks and low-rank factors start
further from the teacher, so the larger spaces give each trial more.
"""


_check = require


@dataclasses.dataclass(frozen=True, kw_only=True)
class Constraints:
    """Limits a student must meet to be picked.

    Args:
        max_accuracy_drop: Largest allowed drop of validation accuracy below the
            teacher's, as a fraction (0.01 is one point).
        max_macs: Largest MAC count; a value <= 1 is a fraction of the teacher's.
            Students above it are rejected before any training.
        max_params: Largest parameter count; a value <= 1 is a fraction of the
            teacher's. Students above it are rejected before any training.
        max_latency_ms: Largest predicted latency (milliseconds, on ``latency:``'s
            runtime, precision and batch, this machine's CPU). Students above it are
            rejected before any training.
    """

    max_accuracy_drop: float = 0.01
    max_macs: float | None = None
    max_params: float | None = None
    max_latency_ms: float | None = None

    def __post_init__(self) -> None:
        _check(0.0 <= self.max_accuracy_drop < 1.0, "constraints.max_accuracy_drop",
               f"must be in [0, 1) (a fraction: 0.01 is one point), got {self.max_accuracy_drop}")
        for key in ("max_macs", "max_params", "max_latency_ms"):
            value = getattr(self, key)
            _check(value is None or value > 0, f"constraints.{key}",
                   f"must be positive (<= 1: fraction of the teacher's), got {value}")

    def resolve(self, teacher_macs: int, teacher_params: int) -> tuple[float, float]:
        """Absolute (max_macs, max_params); ``inf`` where unset."""
        def absolute(limit: float | None, reference: int) -> float:
            if limit is None:
                return float("inf")
            return limit * reference if limit <= 1 else float(limit)

        return absolute(self.max_macs, teacher_macs), absolute(self.max_params, teacher_params)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RulesConfig:
    """protege's rules that skip or stop students (Optuna's pruners are single-objective).

    Args:
        curve: Stop a training trial whose accuracy, even with the largest late gain
            any finished trial made from the same epoch on, cannot beat the most
            accurate finished student that costs no more.
        min_trials: Finished trials needed before the curve or gain rule may fire.
        margin: Accuracy added to the optimistic estimate before comparing (curve and
            gain rules).
        predictor: Before training, skip a student that the accuracy predictor
            (fitted on the finished trials) says is dominated by the front with
            probability above ``predictor_threshold``.
        predictor_min_trials: Finished trials needed before the predictor may fire.
        predictor_threshold: Probability of being dominated that skips a student.
        gain: Before training, skip a student that could not add ``min_gain`` of the
            front's hypervolume even if it ended ``margin`` above the most accurate
            finished student (a bound, no prediction involved).
        min_gain: Hypervolume gain (fraction of the current volume) below which the
            gain rule skips a student.
        max_failed_fraction: Stop the study when more than this fraction of the
            first trials (at least 5) failed: something is wrong with the setup.
    """

    curve: bool = True
    min_trials: int = 5
    margin: float = 0.005
    predictor: bool = True
    predictor_min_trials: int = 20
    predictor_threshold: float = 0.95
    gain: bool = True
    min_gain: float = 0.01
    max_failed_fraction: float = 0.5

    def __post_init__(self) -> None:
        _check(self.min_trials >= 1, "rules.min_trials", f"must be >= 1, got {self.min_trials}")
        _check(0.0 <= self.margin < 1.0, "rules.margin", f"must be in [0, 1), got {self.margin}")
        _check(self.predictor_min_trials >= 2, "rules.predictor_min_trials",
               f"must be >= 2, got {self.predictor_min_trials}")
        _check(0.5 <= self.predictor_threshold <= 1.0, "rules.predictor_threshold",
               f"must be in [0.5, 1], got {self.predictor_threshold}")
        _check(0.0 <= self.min_gain < 1.0, "rules.min_gain",
               f"must be in [0, 1), got {self.min_gain}")
        _check(0.0 < self.max_failed_fraction <= 1.0, "rules.max_failed_fraction",
               f"must be in (0, 1], got {self.max_failed_fraction}")


TIE_BREAKS = ("crowding", "hypervolume")
"""How the ladder orders students of one non-dominated rank for promotion
(:func:`protege.search._rungs.promotion_order`)."""
PROMOTION_RULES = ("front", "limit")
"""Which students of a rung go up first (``rungs.promotion``; ``protege.search.LimitRule``)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RungsConfig:
    """The fidelity ladder of ``method: rungs``: asynchronous successive halving over
    students, promoted by non-dominated rank (MO-ASHA, Schmucker et al., 2021).

    Rung 0 scores a student with the teacher's inherited weights and its BatchNorm
    statistics recalibrated on ``calibration_samples`` training samples (no gradient
    step). Rung ``k >= 1`` trains it on to ``min_epochs * eta**(k - 1)`` epochs in all
    (:meth:`ladder`), going on from the previous rung's weights and optimiser state, and
    the top rung trains it to ``top_epochs``: the top rung is the final fine-tune, and the pick is
    the smallest student at the top rung within the accuracy limit (never trained
    again from the teacher). A student moves up when it is in the top ``1/eta`` of its
    rung by non-dominated rank over (accuracy at that rung, costs), ties broken by
    crowding distance (NSGA-II's) or by hypervolume contribution (``tie_break``).

    Args:
        eta: Reduction factor: a rung keeps ``1/eta`` of the students below it, and
            each rung trains ``eta`` times the epochs of the one below.
        min_epochs: Epochs of rung 1.
        top_epochs: Epochs of the top rung, in all; None: ``distill.finetune_epochs``.
        calibration_samples: Training samples rung 0 recalibrates BatchNorm on (forward
            passes only; a comparison counts them as a third of a training pass each).
        warm_start: Enqueue the uniform ladder first: every width choice at the same
            multiplier below the teacher's, down to the space's floor (the students that
            uniform pruning gives), so the search holds them and promotes them alike.
        tie_break: How students of one non-dominated rank are ordered for promotion:
            ``crowding`` (NSGA-II's crowding distance: a front's ends first, so the
            largest, most accurate student goes up first) or ``hypervolume`` (exclusive
            hypervolume contribution: a front's knees first).
        promotion: Which students of a rung go up first: ``front`` (MO-ASHA's order) or
            ``limit`` (above rung 0, the pick's candidates first: the students whose
            accuracy gap to the teacher, extrapolated to the top rung as a power law in
            epochs, ends within ``constraints.max_accuracy_drop``, cheapest first; see
            :class:`~protege.search.LimitRule`). The number that go up is ASHA's either way.
        screen: Whether rung 0 screens like every rung (keeps the top ``1/eta``); False:
            every student goes on to rung 1 after it is scored at rung 0 (ASHA started
            at one epoch; the ablation that measures what rung 0's screening buys).
    """

    eta: int = 3
    min_epochs: int = 1
    top_epochs: int | None = None
    calibration_samples: int = 512
    warm_start: bool = True
    tie_break: str = "crowding"
    promotion: str = "front"
    screen: bool = True

    def __post_init__(self) -> None:
        _check(self.eta >= 2, "rungs.eta", f"must be >= 2, got {self.eta}")
        _check(self.tie_break in TIE_BREAKS, "rungs.tie_break",
               f"must be one of {', '.join(TIE_BREAKS)}, got {self.tie_break!r}")
        _check(self.promotion in PROMOTION_RULES, "rungs.promotion",
               f"must be one of {', '.join(PROMOTION_RULES)}, got {self.promotion!r}")
        _check(self.min_epochs >= 1, "rungs.min_epochs", f"must be >= 1, got {self.min_epochs}")
        _check(self.top_epochs is None or self.top_epochs >= self.min_epochs, "rungs.top_epochs",
               f"must be >= rungs.min_epochs ({self.min_epochs}), got {self.top_epochs}")
        _check(self.calibration_samples >= 2, "rungs.calibration_samples",
               f"must be >= 2, got {self.calibration_samples}")

    def ladder(self, finetune_epochs: int) -> tuple[int, ...]:
        """Epochs in all at each rung: ``(0, min_epochs, min_epochs * eta, ..., top)``.

        A geometric rung is kept while the next rung trains at least ``eta`` times as long
        (``step * eta <= top``), so the top rung is never a short step above the one
        below: with ``eta`` 3 and 20 fine-tune epochs the ladder is ``(0, 1, 3, 20)``,
        and about one student in 27 scored at rung 0 reaches the top.
        """
        top = self.top_epochs if self.top_epochs is not None else finetune_epochs
        top = max(top, self.min_epochs)
        epochs = [0]
        step = self.min_epochs
        while step < top and (step * self.eta <= top or len(epochs) == 1):
            epochs.append(step)
            step *= self.eta
        return (*epochs, top) if epochs[-1] != top else tuple(epochs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneShotConfig:
    """The weight-sharing supernet of ``method: oneshot`` (``protege.spaces.Supernet``).

    The teacher's copy is trained once per run with the sandwich rule (the largest, the
    smallest and ``students`` random students each step, their gradients summed; BigNAS,
    Yu et al., 2020), each distilled from the teacher's cached logits, or with
    ``inplace`` the smaller ones from the largest's (in-place distillation). Then every
    sampled student is cut from the trained weights, its BatchNorm statistics
    recalibrated on ``calibration_samples`` training samples, and scored on validation
    (no gradient step). The pick (``finetunes`` of them, bisecting the front) is
    fine-tuned from its supernet weights.

    Width and depth choices are slices of the shared weights. Rank choices (level 3) are
    trained at full rank by default: a factorised student's factors are the truncated SVD
    of the trained weights. With ``ranks`` a rank choice below 1.0 runs its layer's
    shared weight projected on its top singular vectors in training, so its gradient
    trains that subspace; on MNIST-1D at level 3 that gave a lower hypervolume and worse
    picks than full rank (``experiments/results/compare_mnist1d_oneshot_ranks.md``).

    Args:
        epochs: Epochs of supernet training; None: ``distill.finetune_epochs``. Each
            epoch costs ``students + 2`` training passes over the data.
        students: Random students per step besides the largest and the smallest.
        inplace: Distil the smaller students from the largest student's logits.
        calibration_samples: Training samples each scored student's BatchNorm is
            recalibrated on (forward passes only).
        ranks: Train the rank choices (sample them in the sandwich steps). False (the
            default): every student trains at full rank.
        warm_start: Score the uniform ladder first (``rungs.warm_start``'s students: every
            width choice at the same multiplier, down to the space's floor), so the front
            always holds the students uniform pruning gives; they count toward the
            sampler's start-up and the ``n_trials`` scored.
        relative_limit: When no slice is within ``constraints.max_accuracy_drop`` of the
            teacher, the pick's first fine-tune goes to the cheapest slice within that drop
            of the most accurate slice (a briefly trained supernet scores every slice
            below what its fine-tune reaches), not to the most accurate slice. The pick
            itself is still judged against the teacher after its fine-tune.
        finetune_front: Front members fine-tuned after the pick, so that the small end of
            the front holds trained students, not only slices: among the members of the
            slice front cheaper than the pick and no cheaper than the smallest student the
            supernet trained (cheaper slices are untrained extrapolations), this many at
            evenly spaced log-MACs, the cheapest always included. Each is fine-tuned from
            its supernet weights like the pick (validation only; saved in
            ``trial-<n>/``) and recorded in the pick's ``finetuned`` with ``front`` True.
            One that meets ``constraints.max_accuracy_drop`` after its fine-tune is cheaper
            than the pick: the cheapest such one becomes the pick (the pick is the cheapest
            fine-tuned student within the limit, as the bisection's).
        front_epochs: Epochs of each front fine-tune; None: ``distill.finetune_epochs``.
    """

    epochs: int | None = None
    students: int = 2
    inplace: bool = False
    calibration_samples: int = 512
    ranks: bool = False
    warm_start: bool = True
    relative_limit: bool = True
    finetune_front: int = 0
    front_epochs: int | None = None

    def __post_init__(self) -> None:
        _check(self.finetune_front >= 0, "oneshot.finetune_front",
               f"must be >= 0, got {self.finetune_front}")
        _check(self.front_epochs is None or self.front_epochs >= 1, "oneshot.front_epochs",
               f"must be >= 1 (or null: distill.finetune_epochs), got {self.front_epochs}")
        _check(self.epochs is None or self.epochs >= 1, "oneshot.epochs",
               f"must be >= 1 (or null: distill.finetune_epochs), got {self.epochs}")
        _check(self.students >= 0, "oneshot.students", f"must be >= 0, got {self.students}")
        _check(self.calibration_samples >= 2, "oneshot.calibration_samples",
               f"must be >= 2, got {self.calibration_samples}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpaceConfig:
    """How the search space is derived from the teacher (see ``protege.spaces.derive``).

    Args:
        options: Option lists that replace the defaults, keyed by choice name or
            glob pattern, e.g. ``{"width.*": [0.5, 0.75, 1.0], "rank.fc": [1.0]}``.
        allow_empty_stages: Let depth choices drop every block of a stage.
        ignored: Layers whose output channels must not change.
    """

    options: dict[str, Any] | None = None
    allow_empty_stages: bool = False
    ignored: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, values in (self.options or {}).items():
            _check(isinstance(values, (list, tuple)) and len(values) > 0, f"space.options.{key}",
                   f"must be a non-empty list of options, got {values!r}")

    def derive_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``derive`` for this config."""
        return {"options": self.options, "allow_empty_stages": self.allow_empty_stages,
                "ignored": self.ignored}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Settings of the Ray Tune backend.

    Args:
        address: Ray cluster to join (``auto`` for the one this machine belongs
            to); None starts a local Ray.
        cpus_per_trial: CPUs Ray reserves for each trial (also its torch threads).
        max_concurrent: Trials running at once; None lets Ray fill the CPUs.
        scheduler: ``fifo`` (the default) leaves stopping to protege's rules, as on every
            backend; ``asha`` also lets Ray Tune's ASHA stop trials, on accuracy alone
            (it favours large students). ``method: rungs`` needs ``fifo``: its ladder
            promotes by non-dominated rank (MO-ASHA) on Ray as in-process, and a rung's
            checkpoints live in the run folder, which every Ray node must reach (one
            machine, or a shared file system).
    """

    address: str | None = None
    cpus_per_trial: float = 1.0
    max_concurrent: int | None = None
    scheduler: str = "fifo"

    def __post_init__(self) -> None:
        _check(self.cpus_per_trial > 0, "ray.cpus_per_trial",
               f"must be positive, got {self.cpus_per_trial}")
        _check(self.max_concurrent is None or self.max_concurrent >= 1, "ray.max_concurrent",
               f"must be >= 1, got {self.max_concurrent}")
        _check(self.scheduler in ("asha", "fifo"), "ray.scheduler",
               f"must be asha or fifo, got {self.scheduler!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """One search experiment, as written in its YAML file.

    Where the teacher and the data come from (``task:``, ``teacher:``, ``data:`` in a
    run file) is not the controller's business: the CLI and ``protege.experiments``
    read those keys (:data:`SOURCE_KEYS`).

    Args:
        level: Size of the search space (1: width per coupled-channel group).
        method: How compute is spent (:data:`METHODS`): ``trials`` (every student a brief
            distillation, then the pick fine-tuned), ``rungs`` (screen at rung 0,
            promote by non-dominated rank, train on up to the fine-tune: ``rungs:``) or
            ``oneshot`` (train a weight-sharing supernet once, score its slices, fine-tune
            the pick from them: ``oneshot:``).
        strategy: Search strategy, a name in ``protege.search.STRATEGIES``; None: ``nsga2``
            with ``method: oneshot`` (hundreds of cheap students), else ``tpe``.
        n_trials: Total number of trials (students sampled) in the study, resumed ones
            included; None (or 0) takes the level's preset (:data:`LEVEL_TRIALS`, or
            :data:`LEVEL_STUDENTS` with ``method: rungs``, :data:`LEVEL_SCORED` with
            ``method: oneshot``) in :meth:`resolve`.
        seed: Seed of the task split, the teacher, the sampler and every trial.
        timeout: Optional wall-clock bound of the search in seconds.
        objectives: ``accuracy`` followed by one or two costs (``macs``, ``params``).
        init: How students start: ``inherit`` the teacher's weights or ``scratch``.
        storage: Optuna storage URL shared by workers (``sqlite:///...``,
            ``postgresql://...``) or ``journal:PATH``; default: SQLite in the run folder.
        space: How the search space is derived (option overrides, stages).
        constraints: Limits the pick must meet.
        distill: Distillation settings of trials and the final fine-tune; without
            ``distill.epochs``, trials get the level's preset (:data:`LEVEL_EPOCHS`)
            and without ``distill.temperature`` the one of ``init``, in :meth:`resolve`.
        rules: Rules that skip or stop hopeless students (every backend; with
            ``method: rungs`` the ladder's promotion does their work and they are off).
        rungs: The ladder of ``method: rungs``.
        oneshot: The supernet of ``method: oneshot``.
        finetunes: Final fine-tunes the pick may spend. 1: fine-tune the smallest
            trial within the accuracy limit (else the most accurate one). ``k`` > 1:
            then bisect the (accuracy, MACs) front by fine-tuned accuracy, below that
            student when it meets the limit after its fine-tune and above it when it
            misses, up to ``k`` fine-tunes in all; return the smallest that met (else
            the most accurate). Brief trials misjudge what a student reaches when
            fine-tuned; this spends fine-tunes to find the smallest that meets it.
        backend: ``optuna`` (in-process, or workers on a shared storage) or ``ray``.
        ray: Settings of the Ray Tune backend.
        latency: Where the ``latency`` objective and limit are predicted and the front
            measured: ``runtime`` (``onnxruntime``, the default where installed, or
            ``torch``), ``precision`` (``fp32`` or ``int8``: onnxruntime's static
            quantisation), ``batch_size`` and ``threads``.
    """

    level: int = 1
    method: str = "trials"
    strategy: str | None = None
    n_trials: int | None = None
    seed: int = 0
    timeout: float | None = None
    objectives: tuple[str, ...] = ("accuracy", "macs")
    init: str = "inherit"
    storage: str | None = None
    space: SpaceConfig = dataclasses.field(default_factory=SpaceConfig)
    constraints: Constraints = dataclasses.field(default_factory=Constraints)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    rules: RulesConfig = dataclasses.field(default_factory=RulesConfig)
    rungs: RungsConfig = dataclasses.field(default_factory=RungsConfig)
    oneshot: OneShotConfig = dataclasses.field(default_factory=OneShotConfig)
    finetunes: int = 1
    backend: str = "optuna"
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    latency: LatencySettings = dataclasses.field(default_factory=LatencySettings)

    def __post_init__(self) -> None:
        _check(self.level in (1, 2, 3), "level", f"must be 1, 2 or 3, got {self.level}")
        _check(self.strategy is None or self.strategy in STRATEGIES, "strategy",
               f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        _check(self.n_trials is None or self.n_trials >= 0, "n_trials",
               f"must be >= 1 (or 0 / null for the level's preset), got {self.n_trials}")
        _check(self.timeout is None or self.timeout > 0, "timeout",
               f"must be positive, got {self.timeout}")
        costs = self.objectives[1:]
        _check(len(self.objectives) in (2, 3) and self.objectives[0] == "accuracy", "objectives",
               f"must be accuracy followed by one or two costs, got {list(self.objectives)}")
        unknown = [name for name in costs if name not in OBJECTIVES[1:]]
        _check(not unknown, "objectives",
               f"unknown objective {unknown[0] if unknown else ''!r}; known costs: "
               f"{', '.join(OBJECTIVES[1:])}")
        _check(len(set(costs)) == len(costs), "objectives", "a cost is listed twice")
        _check(isinstance(self.finetunes, int) and not isinstance(self.finetunes, bool)
               and self.finetunes >= 1, "finetunes",
               f"must be an integer >= 1, got {self.finetunes!r}")
        _check(self.backend in ("optuna", "ray"), "backend",
               f"must be optuna or ray, got {self.backend!r}")
        _check(self.init in INITS, "init", f"must be one of {', '.join(INITS)}, got {self.init!r}")
        _check(self.method in METHODS, "method",
               f"must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "rungs" and self.backend == "ray":
            _check(self.ray.scheduler == "fifo", "ray.scheduler",
                   "method: rungs promotes by its own ladder (MO-ASHA, the same rule on every "
                   "backend); Ray's single-metric ASHA would stop its rungs: use fifo")
        if self.method == "oneshot":
            _check(self.init == "inherit", "init",
                   "method: oneshot cuts students from the trained supernet: init must be inherit")
        if self.method == "rungs":
            _check(self.finetunes == 1, "finetunes",
                   "with method: rungs the top rung is the fine-tune; finetunes must be 1")
            _check(self.distill.max_steps is None and self.distill.max_seconds is None,
                   "distill", "method: rungs budgets by rungs.*; unset distill.max_steps and "
                   "distill.max_seconds")

    @property
    def trials(self) -> int:
        """The study's budget of trials (the level's preset when ``n_trials`` is unset)."""
        presets = {"rungs": LEVEL_STUDENTS, "oneshot": LEVEL_SCORED}.get(self.method,
                                                                        LEVEL_TRIALS)
        return self.n_trials or presets[self.level]

    @property
    def calibration_samples(self) -> int:
        """Training samples a student's BatchNorm is recalibrated on before it is scored
        without training (rung 0 of ``method: rungs``, every student of ``oneshot``)."""
        return (self.oneshot if self.method == "oneshot" else self.rungs).calibration_samples

    @property
    def warm_start(self) -> bool:
        """Whether the study starts with the uniform ladder enqueued: ``rungs.warm_start``
        or ``oneshot.warm_start`` by ``method`` (``method: trials`` never does)."""
        return {"rungs": self.rungs.warm_start,
                "oneshot": self.oneshot.warm_start}.get(self.method, False)

    @property
    def front_epochs(self) -> int:
        """Epochs of each ``oneshot.finetune_front`` fine-tune (``oneshot.front_epochs``,
        else the fine-tune's)."""
        return (self.oneshot.front_epochs or self.distill.finetune_epochs
                or self.distill.budget_epochs)

    @property
    def supernet_epochs(self) -> int:
        """Epochs of ``method: oneshot``'s supernet training (``oneshot.epochs``, else the
        fine-tune's)."""
        return self.oneshot.epochs or self.distill.finetune_epochs or self.distill.budget_epochs

    @property
    def ladder(self) -> tuple[int, ...]:
        """Epochs in all at each rung of ``method: rungs`` (:meth:`RungsConfig.ladder`)."""
        return self.rungs.ladder(self.distill.finetune_epochs or self.distill.budget_epochs)

    def resolve(self) -> Config:
        """This config with every default that depends on other keys filled in.

        ``n_trials`` by level (:data:`LEVEL_TRIALS`), ``distill.epochs`` by level
        (:data:`LEVEL_EPOCHS`), ``distill.temperature`` by ``init``, ``strategy`` by
        ``method``. Idempotent; the
        controller resolves every config it is given, so ``Config(level=3)`` and
        ``Config.from_dict({"level": 3})`` train alike.
        """
        distill = self.distill
        if distill.epochs is None:
            distill = dataclasses.replace(distill, epochs=LEVEL_EPOCHS[self.level])
        strategy = self.strategy or ("nsga2" if self.method == "oneshot" else "tpe")
        return dataclasses.replace(self, n_trials=self.trials, distill=distill.for_init(self.init),
                                   latency=self.latency.resolve(), strategy=strategy)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-able mapping of every key."""
        return dataclasses.asdict(self, dict_factory=_plain_dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Build a config from a mapping, naming any unknown key or bad value.

        The run-file keys of :data:`SOURCE_KEYS` are left to the caller and ignored
        here; ``pruning:`` and ``distill.teacher`` (the names of ``rules:`` and
        ``distill.teacher_mode`` in run folders written before) are read as the new ones.
        """
        data = {key: value for key, value in data.items() if key not in SOURCE_KEYS}
        if "pruning" in data and "rules" not in data:
            data["rules"] = data.pop("pruning")
        distill = data.get("distill")
        if isinstance(distill, Mapping) and "teacher" in distill:  # its name before 0.2
            data["distill"] = {("teacher_mode" if key == "teacher" else key): value
                               for key, value in distill.items()}
        return _build(cls, data, prefix="")


def _plain_dict(items: list[tuple[str, Any]]) -> dict[str, Any]:
    """``asdict`` factory: tuples become lists, so the mapping dumps as plain YAML."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in items}


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` fits a (possibly optional) scalar annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    if origin is tuple:
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_accepts(item, v) for v in value)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def _build(cls: type, data: Any, *, prefix: str) -> Any:
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"unknown key {prefix + unknown[0]!r}; known keys"
                          f"{' under ' + where if prefix else ''}: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            nested = value if value is not None else {}
            kwargs[name] = _build(hint, nested, prefix=f"{prefix}{name}.")
            continue
        if not _accepts(hint, value):
            raise ConfigError(f"{prefix}{name}: expected {_type_name(hint)}, "
                              f"got {value!r} ({type(value).__name__})")
        if isinstance(value, list):
            value = tuple(value)
        floats = hint is float or float in typing.get_args(hint)  # float | None too
        kwargs[name] = float(value) if floats and isinstance(value, int) else value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is dict:
        return "a mapping"
    if typing.get_origin(hint) is tuple:
        return f"a list of {args[0].__name__}"
    if args:
        return " or ".join("null" if a is type(None) else a.__name__ for a in args)
    return getattr(hint, "__name__", str(hint))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    result = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. distill.epochs=3")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, Mapping) else {}
            node = node[part]
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {problem}") from exc
    return result


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML run file with a safe loader, apply ``--set`` overrides and validate it.

    The keys of :data:`SOURCE_KEYS` (where the teacher and data come from) are not
    the controller's and are left out of the returned config.
    """
    return Config.from_dict(apply_overrides(read_yaml(path), overrides or []))
