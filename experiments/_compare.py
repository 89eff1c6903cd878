"""Strategy comparison: arms x seeds on one teacher, at equal training budgets.

An *arm* is a protege search with its settings (``kind: search``, any key of a
``protege run`` config changed through ``set``) or a baseline (``kind:
torch_pruning``: Torch-Pruning's magnitude pruning of the teacher at a sweep of
uniform ratios, each fine-tuned with KD; ``kind: uniform``: the teacher's width
scaled uniformly, trained from scratch). Every arm of a seed sees the same teacher,
the same data and the same budget.

Budget (``budget.kind: compute``, the default): training sample-passes (epochs x
training samples), fine-tunes included. ``budget.trials`` trials of the base
config's ``distill.epochs`` plus one fine-tune of ``distill.finetune_epochs`` set
the total ``B``. A search arm runs trials until what they trained (pruned trials
count the epochs they ran; rejected and duplicate students cost nothing) leaves
less than one trial's worth of ``B`` minus its fine-tunes (one, or the arm's
``finetunes``), or until it has sampled :data:`_CAP` times its nominal ``trials``
students, then picks and fine-tunes (every fine-tuned student joins the front). Rules
that skip students before training (protege's default gain rule) can thus leave
part of the budget unspent: a record's ``sample_passes`` is what the arm used.
A sweep of ``k`` students shares ``B`` out as equal epoch counts (the remainder
spread one epoch at a time). With ``budget.kind: time`` every search arm gets
``budget.seconds`` of trials (then its fine-tune) and a sweep trains its students
in order until ``budget.seconds`` are spent.

With ``budget.kind: mac_passes`` the same ``B`` is counted in MAC-passes: ``B`` times
the teacher's forward MACs, and every student pays its own MACs per sample-pass (an
epoch of a 10x smaller student costs a tenth of the teacher's). A search arm keeps back
the fine-tune of the student it would pick now (every fine-tune at the largest trained
student's MACs when ``finetunes`` > 1) and rejects, before training, a student whose
trial the rest cannot pay for; a ladder passes over the promotions the rest cannot pay
for; a sweep shares ``B`` out in equal MAC-passes, so its smaller students train for
more epochs. One-shot arms are not budgeted in MAC-passes.

A one-shot arm (``method: oneshot``) spends ``B`` less its fine-tunes: scoring every
student of its ``n_trials`` (a third of a sample-pass per calibration sample each) and,
with what is left, the supernet's training (``oneshot.epochs`` when the arm sets it);
each sandwich step's student counts a full sample-pass.

Protocol, the same for every arm: an arm's *front* holds every student it trained,
at the validation accuracy it ended with (a search trial after its brief
distillation, the pick after its fine-tune, a sweep student after its share of the
budget), against its MACs / teacher MACs. The *pick* is the smallest student within
``constraints.max_accuracy_drop`` of the teacher's validation accuracy (else the
most accurate), fine-tuned; only the pick is measured on the test set.
``best_macs_ratio_within_1pt`` is the pick's MAC ratio when its test accuracy is
within one point of the teacher's, else None.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import TensorDataset

from protege.common import atomic_write, read_yaml
from protege.common import require as _check
from protege.experiments._arms import (
    ARM_KINDS,
    Arm,
    Budget,
    CompareTask,
    Student,
    teacher_facts,
)
from protege.experiments._baselines import run_baseline
from protege.provenance import provenance, same_code
from protege.search import (
    Config,
    Study,
    TrialRecord,
    apply_overrides,
    create_study,
    hypervolume,
    pareto_indices,
)
from protege.search.pick import accuracy_floor, choose, pick_cost

__all__ = [
    "ARM_KINDS",
    "Arm",
    "ArmRecord",
    "Budget",
    "CompareConfig",
    "CompareTask",
    "Student",
    "finish_record",
    "load_compare_config",
    "prepare_task",
    "run_arm",
    "run_compare",
    "teacher_facts",
    "total_budget",
]

logger = logging.getLogger(__name__)

WITHIN = 0.01
"""One point of accuracy: the headline's tolerance on the test set."""
_CAP = 4
"""A search may run this many times its nominal trials when rules and duplicates save."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """A comparison, as written in its YAML file.

    Args:
        task: Benchmark task name (``protege.experiments.load_task``), or ``custom``
            when ``source`` names the teacher and data.
        arms: The contenders; the first is the reference of the paired tests.
        seeds: One run of every arm per seed (sampler, trial and fine-tune seeds).
        budget: What each arm of a seed may spend.
        search: Base ``protege run`` config of every arm (``task`` and ``seed`` are
            set by the comparison).
        teacher_seed: Seed of the one teacher every arm and seed distils.
        train_subset: Use only this many training samples (a fixed subset, the same
            for every arm); None uses all.
        workers: Arm-seed runs in parallel processes.
        threads: Torch threads of each worker.
        report: Base name of the result files (default ``compare_<task>``).
        source: The teacher and data named by ``teacher:`` and ``data:`` keys, resolved
            (as a run folder's ``config.yaml`` records them); None for a benchmark task.
    """

    task: str
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: Budget = dataclasses.field(default_factory=Budget)
    search: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    teacher_seed: int = 0
    train_subset: int | None = None
    workers: int = 1
    threads: int = 1
    report: str | None = None
    source: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _check(len(self.arms) >= 1, "arms", "name at least one arm")
        names = [arm.name for arm in self.arms]
        _check(len(set(names)) == len(names), "arms", "an arm name is used twice")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), "seeds",
               f"must be distinct seeds, got {list(self.seeds)}")
        _check(self.workers >= 1, "workers", f"must be >= 1, got {self.workers}")
        _check(self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        _check(self.train_subset is None or self.train_subset >= 1, "train_subset",
               f"must be >= 1, got {self.train_subset}")
        base = self.base_config(self.seeds[0]).distill
        budget_epochs = (self.budget.trials * base.budget_epochs
                         + (base.finetune_epochs or base.budget_epochs))
        for arm in self.arms:
            arm_config = self.arm_config(arm, self.seeds[0])  # every arm's config is valid
            distill = arm_config.distill
            if arm.kind == "search" and self.budget.kind != "time":
                _check(not (self.budget.per_mac and arm_config.method == "oneshot"),
                       f"arms.{arm.name}", "a one-shot arm is not budgeted in MAC-passes; "
                       "use budget.kind: compute")
                reserved = arm_config.finetunes * (distill.finetune_epochs or distill.budget_epochs)
                _check(budget_epochs - reserved >= distill.budget_epochs, f"arms.{arm.name}",
                       f"its {arm_config.finetunes} fine-tunes ({reserved} epochs) leave no "
                       f"trial in a budget of {budget_epochs} epochs; raise budget.trials or "
                       "lower finetunes")
            partial = [key for key in ("samples", "max_steps", "max_seconds")
                       if getattr(distill, key, None) is not None]
            _check(not partial, f"arms.{arm.name}",
                   f"distill.{partial[0] if partial else ''} is not counted by the comparison's "
                   "budget; use train_subset to train every arm on fewer samples")

    @property
    def report_name(self) -> str:
        return self.report or f"compare_{self.task}"

    def arm_config(self, arm: Arm, seed: int) -> Config:
        """The protege config an arm runs with (baselines use its distill and constraints)."""
        data = apply_overrides(dict(self.search) | {"task": self.task, "seed": seed},
                               list(arm.set))
        return Config.from_dict(data).resolve()

    def base_config(self, seed: int) -> Config:
        return Config.from_dict(dict(self.search) | {"task": self.task, "seed": seed}).resolve()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["arms"] = {a.name: {"kind": a.kind, "set": list(a.set), "ratios": list(a.ratios)}
                        for a in self.arms}
        data["seeds"] = list(self.seeds)
        data["search"] = dict(self.search)
        return data


_TOP_KEYS = {f.name for f in dataclasses.fields(CompareConfig)}


def load_compare_config(source: str | Path | Mapping[str, Any],
                        overrides: Sequence[str] = ()) -> CompareConfig:
    """Read a comparison config (YAML path or mapping), apply ``KEY=VALUE`` overrides.

    Like a run file, it names a benchmark ``task:`` or its own ``teacher:`` and ``data:``
    (relative paths relative to the file).
    """
    data = dict(source) if isinstance(source, Mapping) else read_yaml(source)
    root = Path.cwd() if isinstance(source, Mapping) else Path(source).resolve().parent
    data = apply_overrides(data, list(overrides))
    known = _TOP_KEYS | {"teacher", "data"}
    unknown = sorted(set(data) - known)
    _check(not unknown, unknown[0] if unknown else "", f"unknown key; known: "
           f"{', '.join(sorted(known))}")
    own = data.get("source")
    if "teacher" in data or "data" in data:
        from protege.experiments._runfile import Source

        _check("task" not in data, "task", "give either task: or teacher: and data:, not both")
        _check("teacher" in data and "data" in data, "teacher" if "teacher" not in data
               else "data", "missing; a comparison on your own model needs teacher: and data:")
        own = Source.from_dict(data, root=root).to_dict()
        data["task"] = "custom"
    _check("task" in data, "task", "name the benchmark task, or teacher: and data:")
    arms_raw = data.get("arms") or {}
    _check(isinstance(arms_raw, Mapping), "arms", "must map arm names to their settings")
    arms = []
    for name, spec in arms_raw.items():
        spec = dict(spec or {})
        bad = sorted(set(spec) - {"kind", "set", "ratios"})
        _check(not bad, f"arms.{name}", f"unknown key {bad[0] if bad else ''!r}; known: "
               "kind, set, ratios")
        arms.append(Arm(name=str(name), kind=spec.get("kind", "search"),
                        set=tuple(str(s) for s in spec.get("set") or ()),
                        ratios=tuple(float(r) for r in spec.get("ratios") or ())))
    budget = data.get("budget") or {}
    _check(isinstance(budget, Mapping) and set(budget) <= {"kind", "trials", "seconds"},
           "budget", "expected a mapping of kind, trials, seconds")
    return CompareConfig(
        task=str(data["task"]), arms=tuple(arms),
        seeds=tuple(int(s) for s in data.get("seeds", (0, 1, 2))),
        budget=Budget(**budget), search=dict(data.get("search") or {}),
        teacher_seed=int(data.get("teacher_seed", 0)),
        train_subset=data.get("train_subset"), workers=int(data.get("workers", 1)),
        threads=int(data.get("threads", 1)), report=data.get("report"), source=own,
    )


def total_budget(config: CompareConfig, train_samples: int, *,
                 teacher_macs: int | None = None) -> int:
    """The compute budget ``B``: in sample-passes (``kind: compute``), or in MAC-passes
    (``kind: mac_passes``: the same sample-passes times ``teacher_macs``).

    Raises:
        ValueError: ``kind: mac_passes`` without ``teacher_macs``.
    """
    base = config.base_config(config.seeds[0]).distill
    epochs = (config.budget.trials * base.budget_epochs
              + (base.finetune_epochs or base.budget_epochs))
    if not config.budget.per_mac:
        return epochs * train_samples
    if teacher_macs is None:
        raise ValueError("a budget in MAC-passes needs the teacher's MACs")
    return epochs * train_samples * teacher_macs


@dataclasses.dataclass(frozen=True, kw_only=True)
class ArmRecord:
    """One arm on one seed (``compare_<task>.json`` holds one per arm and seed)."""

    arm: str
    kind: str
    seed: int
    hypervolume: float
    best_macs_ratio_within_1pt: float | None
    best_test_accuracy_within_1pt: float | None
    train_seconds: float
    wall_seconds: float
    sample_passes: int
    """Training compute: epochs x training samples, summed over the students trained."""
    budget: int | None
    students_trained: int
    teacher: dict[str, Any]
    pick: dict[str, Any] | None
    front: list[dict[str, Any]]
    curve: list[dict[str, float]]
    """HV after each trained student: ``students``, ``seconds``, ``passes``, ``hypervolume``."""
    provenance: dict[str, Any] | None = None
    """What made it: commit, dirty tree, versions, the arm's config hash, machine."""
    mac_passes: int | None = None
    """Training compute by model size: each student's forward MACs x its sample-passes."""
    budget_kind: str | None = None
    """What ``budget`` counts: ``compute`` (sample-passes) or ``mac_passes``; None: time."""
    train_samples: int | None = None
    """Training samples of the arm (one epoch is this many sample-passes)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmRecord:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def _curve(students: Sequence[Student], teacher: Mapping[str, Any]) -> list[dict[str, float]]:
    teacher_macs, reference = teacher["macs"], (teacher["chance"], 1.0)
    points: list[tuple[float, float]] = []
    curve, seconds, passes = [], 0.0, 0
    for i, s in enumerate(students, start=1):
        seconds += s.seconds
        passes += s.passes
        if not s.on_front:
            continue
        points.append((s.accuracy, s.macs / teacher_macs))
        curve.append({"students": i, "seconds": round(seconds, 3), "passes": passes,
                      "hypervolume": hypervolume(points, reference=reference)})
    return curve


def _front(students: Sequence[Student], teacher_macs: int) -> list[dict[str, Any]]:
    students = [s for s in students if s.on_front]
    points = [(s.accuracy, s.macs / teacher_macs) for s in students]
    return [{"accuracy": students[i].accuracy, "macs_ratio": points[i][1],
             "macs": students[i].macs, "source": students[i].source}
            for i in pareto_indices(points)]


def finish_record(*, arm: Arm, seed: int, students: Sequence[Student], pick: dict[str, Any] | None,
                  teacher: dict[str, Any], budget: int | None, wall: float) -> ArmRecord:
    """Assemble an arm's record from the students it trained and its (tested) pick."""
    macs = int(teacher["macs"])
    within = (pick is not None and pick.get("test_accuracy") is not None
              and pick["test_accuracy"] >= teacher["test_accuracy"] - WITHIN - 1e-12)
    curve = _curve(students, teacher)
    return ArmRecord(
        arm=arm.name, kind=arm.kind, seed=seed,
        hypervolume=curve[-1]["hypervolume"] if curve else 0.0,
        best_macs_ratio_within_1pt=pick["macs_ratio"] if within and pick else None,
        best_test_accuracy_within_1pt=pick["test_accuracy"] if within and pick else None,
        train_seconds=round(sum(s.seconds for s in students), 3), wall_seconds=round(wall, 3),
        sample_passes=sum(s.passes for s in students), budget=budget,
        mac_passes=sum(s.macs * s.passes for s in students),
        students_trained=sum(s.on_front for s in students), teacher=teacher, pick=pick,
        front=_front(students, macs), curve=curve,
    )


def _passes(records: Sequence[TrialRecord], samples: int, config: Config) -> int:
    """Training sample-passes the trials spent (reused students cost nothing). With
    ``method: rungs`` rung 0's BatchNorm recalibration counts too, a forward pass of each
    calibration sample counted as a third of a training pass."""
    return sum(_student_passes(r, samples, config) for r in records)


def _student_passes(record: TrialRecord, samples: int, config: Config) -> int:
    if record.duplicate_of is not None:
        return 0
    passes = len(record.history) * samples
    if record.rungs:  # scored at rung 0: a forward pass over the calibration sample
        passes += min(config.calibration_samples, samples) // 3
    return passes


def _search_arm(task: CompareTask, arm: Arm, config: Config, *, budget: Budget, total: int | None,
                teacher: dict[str, Any], out: Path,
                ) -> tuple[list[Student], dict[str, Any] | None]:
    samples = len(task.train)
    data: dict[str, Any] = dict(train=task.train, val=task.val, test=task.test,
                                example_input=task.example_input, out=out)
    finetune = (config.distill.finetune_epochs or config.distill.budget_epochs) * samples
    rungs = config.method == "rungs"
    # the pick's fine-tunes, all reserved up front (a ladder keeps back what it needs)
    finetunes = 0 if rungs else finetune * config.finetunes
    if config.method == "oneshot" and config.oneshot.finetune_front:  # the front's, too
        finetunes += config.oneshot.finetune_front * samples * config.front_epochs
    if budget.kind == "time":
        study = create_study(task.teacher, config=dataclasses.replace(
            config, timeout=budget.seconds, n_trials=100_000), **data)
        study.optimize()
    elif config.method == "oneshot":
        assert total is not None
        study = _oneshot_arm(task, config, total=total - finetunes, data=data)
    else:
        assert total is not None
        study = _budgeted_study(task, config, total=total,
                                unit=teacher["macs"] if budget.per_mac else None, data=data)
    result = study.finish()
    # Every student that trained, at the accuracy it ended with (a stopped one: its last
    # epoch; on a ladder, its highest rung, the pick's training to the top rung included).
    trials = study.trials if rungs else result.trials
    students = _supernet_students(study) + [
        Student(t.accuracy if t.accuracy is not None else t.history[-1], t.macs or 0,
                t.train_seconds or 0.0, _student_passes(t, samples, config), f"trial {t.number}")
        for t in sorted(trials, key=lambda t: t.number)
        if t.duplicate_of is None and (t.history or t.rungs)]
    pick = None
    if result.pick is not None:
        p = result.pick
        # every fine-tuned student is a point of the front, at its fine-tuned accuracy (a
        # ladder's top rung is its fine-tune: those students are in the list already)
        for f in () if rungs else p.finetuned or (
                {"trial": p.trial, "macs": p.macs, "val_accuracy": p.val_accuracy,
                 "seconds": p.finetune_seconds},):
            name = "pick" if f["trial"] == p.trial else "fine-tuned"
            passes = f["epochs"] * samples if f.get("epochs") else finetune
            students.append(Student(f["val_accuracy"], f["macs"], f["seconds"], passes,
                                    f"{name} (trial {f['trial']}, fine-tuned)"))
        pick = {"source": f"trial {p.trial}", "macs": p.macs,
                "macs_ratio": p.macs / teacher["macs"],
                "val_accuracy": p.val_accuracy, "test_accuracy": p.test_accuracy,
                "meets_val_limit": p.meets_constraints, "arch": p.arch}
    return students, pick


def ladder_fits(ladder: Sequence[int], *, samples: int, left: float, reached: int,
                pick_macs: int, macs: int, rung: int) -> bool:
    """Whether the compute ``left`` pays for promoting a student of ``macs`` MACs to
    ``rung`` and still for training the ladder's pick to the top rung afterwards.

    ``reached`` is the highest rung any student holds and ``pick_macs`` the MACs of the
    student the ladder would pick there now (in sample-passes, both MACs are 1). A
    promotion to a new highest rung makes its student the one the pick's reserve is kept
    for, so it is paid from that reserve and not counted twice; a student joining the
    highest rung may become the pick, so the reserve grows to its MACs if they are larger.

    Args:
        ladder: Epochs in all at each rung (``Config.ladder``).
        samples: Training samples (one epoch is this many sample-passes).
        left: Budget not yet spent (sample-passes, or MAC-passes).
    """
    after = macs if rung > reached else max(pick_macs, macs) if rung == reached else pick_macs
    return ((ladder[rung] - ladder[rung - 1]) * samples * macs
            + (ladder[-1] - ladder[max(rung, reached)]) * samples * after <= left)


def _budgeted_study(task: CompareTask, config: Config, *, total: int, unit: int | None,
                    data: dict[str, Any]) -> Study:
    """A search arm's study (trials or a ladder), optimised until its compute ``total``
    is spent, the pick's training kept back: sample-passes, or MAC-passes when ``unit``
    (the teacher's MACs, the unit of ``total``'s sample-passes) is given.

    Trials run until their compute leaves less than one more step of the budget (a trial;
    on a ladder, its shortest rung) of the smallest student the space holds, or until the
    study holds :data:`_CAP` times the trials the budget buys (rules and duplicates may
    save compute): one study, one sampler, stopped by a callback. What the pick's
    fine-tunes will cost is kept back: in sample-passes a fixed amount; in MAC-passes that
    of the student the pick would fine-tune now (the largest trained one with
    ``finetunes`` > 1), and a student whose trial would leave too little for the fine-tune
    of whichever student is then the pick is rejected before it trains. A ladder's
    students cost little at rung 0: it runs until the compute is spent, keeping back what
    training the student it would pick now to the top rung still costs, and passing over
    promotions the rest cannot pay for (:func:`ladder_fits`; another that fits is taken).
    """
    samples = len(task.train)
    per_mac = unit is not None
    rungs = config.method == "rungs"
    ladder = config.ladder
    step = (min(b - a for a, b in zip(ladder, ladder[1:], strict=False)) if rungs
            else config.distill.budget_epochs) * samples
    finetune = (config.distill.finetune_epochs or config.distill.budget_epochs) * samples
    reserved = 0 if rungs else finetune * config.finetunes  # the pick's, in sample-passes
    # In sample-passes the cap on proposals is known now and sizes the sampler's start-up;
    # in MAC-passes it depends on the space's smallest student, known once the study has
    # derived it, and is checked by the callback.
    cap = 100_000 if rungs or per_mac else _CAP * max(1, (total - reserved) // step)
    study = create_study(task.teacher, config=dataclasses.replace(config, n_trials=cap), **data)
    smallest = study.space.macs_bounds()[0] if per_mac else 1
    if per_mac and not rungs:
        cap = _CAP * max(1, (total - reserved * (unit or 1)) // (step * smallest))
    floor = accuracy_floor(study.profile, config)
    cost = pick_cost(config.objectives)

    def macs(record: TrialRecord) -> int:
        return (record.macs or 0) if per_mac else 1

    def candidate(records: Sequence[TrialRecord]) -> int | None:
        """The MACs (1 in sample-passes) of the student whose training the pick needs."""
        if not records:
            return None
        if not rungs and config.finetunes > 1:
            return max(macs(r) for r in records)
        chosen = choose(records, floor=floor, cost=cost)
        return macs(chosen[0]) if chosen is not None else None

    def settle_ladder(study: Study) -> bool:
        """Limit the ladder's promotions (and, in MAC-passes, its new students) to what
        the compute left pays for; True while one more step of the smallest student fits.
        A promotion adds to a student seen before: every student is counted again."""
        trials = study.trials
        left = total - sum(_student_passes(t, samples, config) * macs(t) for t in trials)
        scored = [t for t in trials if t.trained and t.rungs]
        reached = max((t.rung or 0 for t in scored), default=0)
        top = candidate([t for t in scored if t.rung == reached]) or 0
        study.limit_promotions(lambda record, rung: ladder_fits(
            ladder, samples=samples, left=left, reached=reached, pick_macs=top,
            macs=macs(record), rung=rung))
        free = left - (ladder[-1] - ladder[reached]) * samples * top
        if per_mac:  # scoring a new student at rung 0 must not eat into the pick's share
            study.limit_macs(free / max(1, min(config.calibration_samples, samples) // 3))
        return free >= step * smallest

    # Trials: what they spent and what they trained, kept up to date from the callback's
    # records (a resumed arm's earlier trials read once), not read from the storage again.
    earlier = study.trials
    used = sum(_student_passes(t, samples, config) * macs(t) for t in earlier)
    trained = [t for t in earlier if t.trained]
    proposed = len(earlier)

    def settle_trials(study: Study) -> bool:
        """Limit the next trial to what the compute left pays for, the pick's fine-tune
        kept back; True while one more trial of the smallest student fits."""
        left = total - used
        if not per_mac:
            return left - reserved >= step
        pick = candidate(trained)
        # the next student (m MACs) may become the pick: step m + reserved max(pick, m) fit
        most = left / (step + reserved)  # it does, and is larger than the pick now
        if pick is not None and left >= reserved * pick:  # it does not, and is no larger
            most = max(most, min(pick, (left - reserved * pick) / step))
        study.limit_macs(most)
        return most >= smallest and proposed < cap

    def spent(study: Study, record: TrialRecord) -> None:
        nonlocal used, proposed
        if rungs:
            going = settle_ladder(study)
        else:
            used += _student_passes(record, samples, config) * macs(record)
            proposed += 1
            if record.trained:
                trained.append(record)
            going = settle_trials(study)
        if not going:
            study.stop()

    if settle_ladder(study) if rungs else settle_trials(study):
        study.optimize(callbacks=[spent])
    return study


def _oneshot_arm(task: CompareTask, config: Config, *, total: int,
                 data: dict[str, Any]) -> Study:
    """A one-shot arm's study, optimised within ``total`` sample-passes (the budget less
    the pick's fine-tunes): the supernet trains for what is left once every student of
    ``n_trials`` has been scored (``oneshot.epochs`` when the arm sets it), and scoring
    stops when the next student would overspend."""
    samples = len(task.train)
    score = min(config.calibration_samples, samples) // 3
    per_epoch = samples * (config.oneshot.students + 2)
    epochs = config.oneshot.epochs or max(1, (total - config.trials * score) // per_epoch)
    config = dataclasses.replace(config, oneshot=dataclasses.replace(config.oneshot,
                                                                     epochs=epochs))
    study = create_study(task.teacher, config=config, **data)
    scored = _passes(study.trials, samples, config)  # a resumed arm's students, read once

    def spent(study: Study, record: TrialRecord) -> None:
        nonlocal scored
        scored += _student_passes(record, samples, config)
        if total - (study.supernet or {}).get("sample_passes", 0) - scored < score:
            study.stop()

    study.optimize(callbacks=[spent])
    return study


def _supernet_students(study: Study) -> list[Student]:
    """A one-shot arm's supernet training, as compute that is no point of the front."""
    facts = study.supernet
    if not facts:
        return []
    return [Student(facts["history"][-1]["largest"] if facts.get("history") else 0.0,
                    round(facts["mac_passes"] / max(1, facts["sample_passes"])),
                    facts["seconds"], facts["sample_passes"], "supernet training",
                    on_front=False)]


class StaleRecord(ValueError):
    """A finished arm's record was made by other code or another config."""


def arm_provenance(config: CompareConfig, arm: Arm, seed: int) -> dict[str, Any]:
    """What an arm-seed run is made by: the code, and a hash of everything that decides its
    result (the arm's resolved config, its kind and sweep, the budget, the task)."""
    what = {"arm": config.arm_config(arm, seed).to_dict(), "kind": arm.kind,
            "ratios": list(arm.ratios), "budget": dataclasses.asdict(config.budget),
            "task": config.task, "teacher_seed": config.teacher_seed,
            "train_subset": config.train_subset}
    return provenance(what)


def _finished(done: Path, config: CompareConfig, arm: Arm, seed: int, *,
              reuse_stale: bool) -> ArmRecord | None:
    """The record in ``done`` if there is one made by this code and config.

    Raises:
        StaleRecord: If it was made by other code (or a dirty tree) or another config,
            unless ``reuse_stale``.
    """
    if not done.is_file():
        return None
    record = ArmRecord.from_dict(json.loads(done.read_text()))
    now = arm_provenance(config, arm, seed)
    if reuse_stale or same_code(record.provenance, now):
        return record
    was = record.provenance or {}
    raise StaleRecord(
        f"{done} was made by other code or another config (commit "
        f"{(was.get('commit') or 'unknown')[:10]}{' dirty' if was.get('dirty') else ''}, "
        f"config {was.get('config_hash') or 'unknown'}; now {(now['commit'] or 'unknown')[:10]}"
        f"{' dirty' if now['dirty'] else ''}, config {now['config_hash']}): use another --out, "
        "delete it to run it again, or pass --reuse-stale to use it anyway")


def run_arm(task: CompareTask, config: CompareConfig, arm: Arm, seed: int, *,
            out: str | Path, reuse_stale: bool = False) -> ArmRecord:
    """Run one arm on one seed into ``out`` (resumable: a finished one is read back when
    the same code and config made it; see :class:`StaleRecord`)."""
    out = Path(out)
    done = out / "record.json"
    finished = _finished(done, config, arm, seed, reuse_stale=reuse_stale)
    if finished is not None:
        return finished
    start = time.perf_counter()
    arm_config = config.arm_config(arm, seed)
    teacher = teacher_facts(task)  # once per arm and seed: MACs, val and test accuracy
    total = None
    if config.budget.kind != "time":
        total = total_budget(config, len(task.train), teacher_macs=teacher["macs"])
    if arm.kind == "search":
        students, pick = _search_arm(task, arm, arm_config, budget=config.budget, total=total,
                                     teacher=teacher, out=out / "run")
    else:
        students, pick = run_baseline(task, arm, arm_config, budget=config.budget, total=total,
                                      teacher=teacher, out=out)
    record = finish_record(arm=arm, seed=seed, students=students, pick=pick, teacher=teacher,
                           budget=total, wall=time.perf_counter() - start)
    record = dataclasses.replace(
        record, provenance=arm_provenance(config, arm, seed), train_samples=len(task.train),
        budget_kind=None if total is None else config.budget.kind)
    with atomic_write(done) as handle:
        json.dump(record.to_dict(), handle, indent=1)
    return record


def prepare_task(config: CompareConfig) -> CompareTask:
    """Build the teacher and data (a benchmark's teacher is cached), cut to ``train_subset``.

    A benchmark task and the user's own ``teacher:`` / ``data:`` take the same path
    (``protege.experiments.build_inputs``).
    """
    from protege.experiments._runfile import Source, benchmark_source, build_inputs
    from protege.experiments._sources import SourceError

    if config.source is not None:
        source = Source.from_dict(config.source, root=Path.cwd())
    else:
        source = benchmark_source(config.task, seed=config.teacher_seed)
    inputs = build_inputs(config.base_config(config.seeds[0]), source)
    if inputs.test is None:
        raise SourceError("a comparison reports test accuracy: give test data (an image "
                          "folder's test/, data.test_table, or a factory's third split)")
    return CompareTask(source.task or "custom", inputs.teacher,
                       train_subset(inputs.train, config.train_subset), inputs.val, inputs.test,
                       inputs.example_input)


def train_subset(train: TensorDataset, samples: int | None) -> TensorDataset:
    """``samples`` rows of ``train`` drawn with seed 0, in their order (all when None or
    fewer): the comparisons' ``train_subset``, and the benchmarks that match it."""
    if samples is None or samples >= len(train):
        return train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    keep = order[:samples].sort().values
    return TensorDataset(*(t[keep] for t in train.tensors))


def _job(config_data: dict[str, Any], arm_name: str, seed: int, out: str) -> dict[str, Any]:
    """One arm-seed run in a worker process (spawned: it loads the cached teacher itself)."""
    config = load_compare_config(config_data)
    torch.set_num_threads(config.threads)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    arm = next(a for a in config.arms if a.name == arm_name)
    return run_arm(prepare_task(config), config, arm, seed, out=out).to_dict()


def _raw(config: CompareConfig) -> dict[str, Any]:
    data = config.to_dict()
    data["budget"] = dataclasses.asdict(config.budget)
    return data


def run_compare(config: CompareConfig, *, out: str | Path, task: CompareTask | None = None,
                progress: Callable[[ArmRecord], None] | None = None,
                reuse_stale: bool = False) -> list[ArmRecord]:
    """Run every arm on every seed (finished ones are reused) and return their records.

    Args:
        out: Compare folder: ``<arm>/seed<k>/`` holds each run (a search arm's run
            folder is ``run/``), ``record.json`` marks it done.
        task: The teacher and data; default: ``config.task`` loaded with its cached
            teacher (needed with ``workers > 1``: each worker loads it itself).
        progress: Called with each record as its run finishes.
        reuse_stale: Reuse finished records made by other code or another config
            (else :class:`StaleRecord` names the first one, before anything runs).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.yaml").write_text(yaml.safe_dump(_raw(config), sort_keys=False))
    # arm by arm, so an interrupted comparison has whole arms (all seeds) to show
    jobs = [(arm, seed) for arm in config.arms for seed in config.seeds]
    records: dict[tuple[str, int], ArmRecord] = {}

    def folder(arm: Arm, seed: int) -> Path:
        return out / arm.name / f"seed{seed}"

    for arm, seed in jobs:  # finished runs are read back first: a stale one stops it all
        finished = _finished(folder(arm, seed) / "record.json", config, arm, seed,
                             reuse_stale=reuse_stale)
        if finished is not None:
            records[arm.name, seed] = finished
            if progress is not None:
                progress(finished)
    if config.workers > 1 and task is None:
        todo = [(arm, seed) for arm, seed in jobs if (arm.name, seed) not in records]
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(config.workers, mp_context=context) as pool:
            futures = {pool.submit(_job, _raw(config), arm.name, seed, str(folder(arm, seed))):
                       (arm.name, seed) for arm, seed in todo}
            for future in concurrent.futures.as_completed(futures):
                record = ArmRecord.from_dict(future.result())
                records[futures[future]] = record
                if progress is not None:
                    progress(record)
    else:
        todo = [(arm, seed) for arm, seed in jobs if (arm.name, seed) not in records]
        shared = (task or prepare_task(config)) if todo else None
        for arm, seed in todo:
            assert shared is not None
            record = run_arm(shared, config, arm, seed, out=folder(arm, seed))
            records[arm.name, seed] = record
            if progress is not None:
                progress(record)
    return [records[arm.name, seed] for arm, seed in jobs]
