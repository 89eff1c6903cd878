"""Any trial's student, fine-tuned as the pick was: for exporting another point of the front."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from protege.distill import as_tensors, cache_teacher_outputs
from protege.search._export import load_student, save_student, write_json
from protege.search._run import RunFolder, load_run
from protege.spaces import derive

__all__ = ["finetune_trial"]


def _tensors(data: Dataset | DataLoader | None, what: str) -> TensorDataset | None:
    return None if data is None else TensorDataset(*as_tensors(data, what=what))


def finetune_trial(run: RunFolder | str | Path, teacher: nn.Module, *, number: int,
                   train: Dataset | DataLoader, val: Dataset | DataLoader,
                   example_input: torch.Tensor, test: Dataset | DataLoader | None = None,
                   accelerator: str = "cpu") -> tuple[Path, nn.Module]:
    """Trial ``number``'s student, fine-tuned like the pick, saved in ``<run>/trial-<number>/``.

    The pick's own folder (``best/``) is returned for the pick's trial, and a trial
    fine-tuned before is loaded, not trained again.

    Returns:
        The folder (``arch.json``, ``student.pt``, ``summary.json``) and the student.

    Raises:
        ValueError: If the run has no such trial.
    """
    run = run if isinstance(run, RunFolder) else load_run(run)
    if run.pick is not None and run.pick.trial == number:
        folder = run.path / "best"
    else:
        folder = run.path / f"trial-{number}"
    if (folder / "arch.json").is_file() and (folder / "student.pt").is_file():
        return folder, load_student(teacher, folder / "arch.json", folder / "student.pt")
    from protege.search._study import _finetune, _floor  # the pick's own, not a copy

    record = run.record(number)
    config = run.config
    space = derive(teacher, example_input, level=config.level, **config.space.derive_kwargs())
    outputs = cache_teacher_outputs(teacher, train, cache_dir=run.path / "cache",
                                    config=config.distill)
    val_data = _tensors(val, "validation data")
    assert val_data is not None
    floor = (_floor(run.teacher, config) if run.teacher is not None else 0.0)
    pick, student = _finetune(record, floor=floor, space=space, outputs=outputs, val=val_data,
                              test=_tensors(test, "test data"), config=config,
                              accelerator=accelerator, teacher=teacher)
    save_student(folder, student, record.arch, space, derive_kwargs=config.space.derive_kwargs(),
                 trial=number)
    write_json(folder / "summary.json", dataclasses.asdict(pick))
    return folder, student
