"""One search study: profile the teacher, sample students, distil them, pick and export."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from protege.distill import TeacherOutputs, as_tensors, cache_teacher_outputs, evaluate
from protege.distill import train_student as _train_student
from protege.estimators import count_macs
from protege.search._config import Config
from protege.search._pareto import hypervolume, pareto_indices
from protege.search._records import Pick, TeacherProfile, TrialRecord, load_records
from protege.search._strategies import make_sampler
from protege.spaces import WIDTH_OPTIONS, Architecture, SearchSpace, derive

__all__ = ["SearchResult", "TrialCallback", "load_student", "run_search"]

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
        front: Pareto-optimal completed trials (accuracy up, MACs down), by MACs.
        hypervolume: Area the front dominates in (accuracy, MACs / teacher MACs),
            against the reference (accuracy 0, MAC ratio 1).
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


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.replace(handle.name, path)


def _write_records(path: Path, records: Sequence[TrialRecord]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict()) + "\n")
    os.replace(handle.name, path)


class _Objective:
    """The trial function: materialise, check limits, distil, report."""

    def __init__(self, *, space: SearchSpace, outputs: TeacherOutputs, val: TensorDataset,
                 example_input: torch.Tensor, config: Config, max_macs: float,
                 max_params: float, accelerator: str) -> None:
        self.space = space
        self.outputs = outputs
        self.val = val
        self.example_input = example_input
        self.config = config
        self.max_macs = max_macs
        self.max_params = max_params
        self.accelerator = accelerator

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        arch = {name: trial.suggest_categorical(name, list(options))
                for name, options in self.space.choices.items()}
        trial.set_user_attr("arch", arch)
        student = self.space.materialize(arch)
        macs, params = count_macs(student, self.example_input)
        trial.set_user_attr("macs", macs)
        trial.set_user_attr("params", params)
        reason = self._violation(macs, params)
        if reason is not None:
            trial.set_user_attr("pruned_reason", reason)
            raise optuna.TrialPruned(reason)
        earlier = _completed_with(trial.study, arch, before=trial.number)
        if earlier is not None:
            trial.set_user_attr("duplicate_of", earlier.number)
            for key in ("history", "train_seconds"):
                trial.set_user_attr(key, earlier.user_attrs.get(key))
            return earlier.values[0], float(macs)
        try:
            result = _train_student(
                student.to(_device(self.accelerator)), self.outputs, self.val,
                config=self.config.distill, seed=self.config.seed + trial.number,
                accelerator=self.accelerator,
            )
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr("history", list(result.history))
        trial.set_user_attr("train_seconds", round(result.seconds, 3))
        return result.val_accuracy, float(macs)

    def _violation(self, macs: int, params: int) -> str | None:
        if macs > self.max_macs:
            return (f"macs {macs} > max_macs {self.max_macs:.0f} "
                    f"(over by {100 * (macs / self.max_macs - 1):.1f}%)")
        if params > self.max_params:
            return (f"params {params} > max_params {self.max_params:.0f} "
                    f"(over by {100 * (params / self.max_params - 1):.1f}%)")
        return None


def _device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _completed_with(study: optuna.Study, arch: Architecture, *,
                    before: int) -> optuna.trial.FrozenTrial | None:
    for past in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if past.number < before and past.user_attrs.get("arch") == arch:
            return past
    return None


def _open_study(config: Config, out: Path) -> optuna.Study:
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    study = optuna.create_study(
        storage=storage, study_name=STUDY_NAME, directions=["maximize", "minimize"],
        sampler=make_sampler(config.strategy, seed=config.seed, n_trials=config.n_trials),
        load_if_exists=True,
    )
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        logger.warning("trial %d was running when its process stopped; marking it failed",
                       stale.number)
        study.tell(stale.number, state=TrialState.FAIL)
    return study


def _profile(teacher: nn.Module, example_input: torch.Tensor, val: TensorDataset,
             test: TensorDataset | None) -> TeacherProfile:
    macs, params = count_macs(teacher, example_input)
    return TeacherProfile(
        macs=macs, params=params, val_accuracy=evaluate(teacher, val),
        test_accuracy=evaluate(teacher, test) if test is not None else None,
    )


def _check_feasible(space: SearchSpace, example_input: torch.Tensor, *, max_macs: float,
                    max_params: float) -> None:
    macs, params = count_macs(space.materialize(space.smallest()), example_input)
    if macs > max_macs:
        raise ValueError(f"no student can meet max_macs={max_macs:.0f}: the smallest student "
                         f"in the space has {macs} MACs")
    if params > max_params:
        raise ValueError(f"no student can meet max_params={max_params:.0f}: the smallest "
                         f"student in the space has {params} parameters")


def _choose(records: Sequence[TrialRecord], teacher: TeacherProfile,
            config: Config) -> tuple[TrialRecord, bool] | None:
    """Smallest completed student within the accuracy limit; else the most accurate one."""
    done = [r for r in records if r.state == "complete" and r.accuracy is not None]
    if not done:
        return None
    floor = teacher.val_accuracy - config.constraints.max_accuracy_drop
    within = [r for r in done if r.accuracy is not None and r.accuracy >= floor - 1e-12]
    if within:
        return min(within, key=lambda r: (r.macs, -(r.accuracy or 0.0), r.number)), True
    return max(done, key=lambda r: (r.accuracy or 0.0, -(r.macs or 0), -r.number)), False


def _to_tensor_dataset(data: Dataset | DataLoader | None, what: str) -> TensorDataset | None:
    if data is None:
        return None
    return TensorDataset(*as_tensors(data, what=what))


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
) -> SearchResult:
    """Search students of ``teacher`` and return the front and the pick.

    The run folder ``out`` receives ``config.yaml``, the Optuna storage
    ``study.db``, ``trials.jsonl``, ``pareto.json``, ``summary.json`` and
    ``best/`` (``arch.json``, ``student.pt``). Running again with the same ``out``
    resumes the study: finished trials are kept and only the missing ones run.
    """
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"the teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    val_data = _to_tensor_dataset(val, "validation data")
    test_data = _to_tensor_dataset(test, "test data")
    assert val_data is not None

    outputs = cache_teacher_outputs(teacher, train, cache_dir=out / "cache")
    profile = _profile(teacher, example_input, val_data, test_data)
    logger.info("teacher: %d MACs, %d params, val accuracy %.4f",
                profile.macs, profile.params, profile.val_accuracy)
    space = derive(teacher, example_input, level=config.level)
    max_macs, max_params = config.constraints.resolve(profile.macs, profile.params)
    _check_feasible(space, example_input, max_macs=max_macs, max_params=max_params)

    study = _open_study(config, out)
    study.set_user_attr("teacher", dataclasses.asdict(profile))
    objective = _Objective(space=space, outputs=outputs, val=val_data, example_input=example_input,
                           config=config, max_macs=max_macs, max_params=max_params,
                           accelerator=accelerator)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        records = load_records(study)
        _write_records(out / "trials.jsonl", records)
        record = next(r for r in records if r.number == trial.number)
        for callback in callbacks:
            callback(record)

    finished = len(study.get_trials(deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.PRUNED)))
    remaining = config.n_trials - finished
    if remaining > 0:
        logger.info("running %d trials (%d already finished)", remaining, finished)
        study.optimize(objective, n_trials=remaining, timeout=config.timeout,
                       callbacks=[after_trial], catch=(Exception,))
    records = load_records(study)
    _write_records(out / "trials.jsonl", records)
    return _finish(out=out, records=records, profile=profile, space=space, outputs=outputs,
                   val=val_data, test=test_data, config=config, accelerator=accelerator)


def _finish(*, out: Path, records: list[TrialRecord], profile: TeacherProfile,
            space: SearchSpace, outputs: TeacherOutputs, val: TensorDataset,
            test: TensorDataset | None, config: Config, accelerator: str) -> SearchResult:
    done = [r for r in records if r.state == "complete" and r.duplicate_of is None]
    front = [done[i] for i in pareto_indices([(r.accuracy or 0.0, r.macs or 0) for r in done])]
    volume = hypervolume([(r.accuracy or 0.0, (r.macs or 0) / profile.macs) for r in done],
                         reference=(0.0, 1.0))
    _write_json(out / "pareto.json", [
        {"trial": r.number, "arch": r.arch, "accuracy": r.accuracy, "macs": r.macs,
         "params": r.params} for r in front])
    summary: dict[str, Any] = {
        "teacher": dataclasses.asdict(profile),
        "trials": {state: sum(r.state == state for r in records)
                   for state in ("complete", "pruned", "failed")},
        "hypervolume": volume,
        "pick": None,
    }
    chosen = _choose(done, profile, config)
    pick, student = None, None
    if chosen is None:
        logger.warning("no trial completed: nothing to pick")
    else:
        pick, student = _finetune(chosen[0], meets=chosen[1], space=space, outputs=outputs,
                                  val=val, test=test, config=config, accelerator=accelerator)
        _save_student(out / "best", student, pick, space)
        summary["pick"] = dataclasses.asdict(pick) | {
            "macs_ratio": pick.macs / profile.macs,
            "accuracy_drop": profile.val_accuracy - pick.val_accuracy,
        }
    _write_json(out / "summary.json", summary)
    return SearchResult(out, profile, tuple(records), tuple(front), volume, pick, student)


def _finetune(record: TrialRecord, *, meets: bool, space: SearchSpace, outputs: TeacherOutputs,
              val: TensorDataset, test: TensorDataset | None, config: Config,
              accelerator: str) -> tuple[Pick, nn.Module]:
    if not meets:
        logger.warning("no student met max_accuracy_drop=%s; picking the most accurate one "
                       "(trial %d)", config.constraints.max_accuracy_drop, record.number)
    student = space.materialize(record.arch).to(_device(accelerator))
    epochs = config.distill.finetune_epochs or config.distill.epochs
    logger.info("fine-tuning trial %d for %d epochs", record.number, epochs)
    result = _train_student(student, outputs, val, config=config.distill, epochs=epochs,
                            seed=config.seed, accelerator=accelerator)
    student = student.cpu().eval()
    pick = Pick(
        trial=record.number, arch=record.arch, macs=record.macs or 0, params=record.params or 0,
        search_accuracy=record.accuracy or 0.0, val_accuracy=result.val_accuracy,
        test_accuracy=evaluate(student, test) if test is not None else None,
        meets_constraints=meets, finetune_seconds=round(result.seconds, 3),
    )
    return pick, student


def _save_student(folder: Path, student: nn.Module, pick: Pick, space: SearchSpace) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "arch.json", {
        "arch": pick.arch,
        "level": space.level,
        "example_input_shape": list(space.example_input.shape),
        "width_options": list(next(iter(space.choices.values()), ())),
        "trial": pick.trial,
    })
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
        torch.save(student.state_dict(), handle)
    os.replace(handle.name, folder / "student.pt")


def load_student(teacher: nn.Module, arch_path: str | Path, state_path: str | Path) -> nn.Module:
    """Rebuild a saved student from its teacher, ``arch.json`` and ``student.pt``.

    Raises:
        ValueError: If the files are unreadable or do not fit this teacher.
    """
    try:
        spec = json.loads(Path(arch_path).read_text())
        arch, shape = spec["arch"], spec["example_input_shape"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{arch_path}: not a protege arch.json ({exc})") from exc
    space = derive(teacher, torch.zeros(*shape), level=int(spec.get("level", 1)),
                   width_options=spec.get("width_options") or WIDTH_OPTIONS)
    student = space.materialize(arch)
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        student.load_state_dict(state)
    except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{state_path}: weights do not fit the student of {arch_path} "
                         f"({str(exc).splitlines()[0]})") from exc
    return student.eval()
