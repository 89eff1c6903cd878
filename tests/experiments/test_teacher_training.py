"""Training a task's teacher: no one-sample batch, a progress line per epoch (issue 18)."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_nets import BatchSizes
from torch import nn
from torch.utils.data import TensorDataset

from protege.experiments import _teachers


def test_teacher_training_feeds_no_single_sample_and_logs_each_epoch(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    built: list[BatchSizes] = []
    original = _teachers.build_teacher

    def build(name: str) -> nn.Module:
        built.append(BatchSizes(original(name)))
        return built[-1]

    monkeypatch.setattr(_teachers, "build_teacher", build)
    schedules: list[torch.optim.lr_scheduler.OneCycleLR] = []

    class Schedule(torch.optim.lr_scheduler.OneCycleLR):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            schedules.append(self)

    monkeypatch.setattr(torch.optim.lr_scheduler, "OneCycleLR", Schedule)
    generator = torch.Generator().manual_seed(0)
    train = TensorDataset(torch.randn(33, 1, 8, 8, generator=generator), torch.arange(33) % 10)
    val = TensorDataset(torch.randn(8, 1, 8, 8, generator=generator), torch.arange(8))
    recipe = _teachers.TeacherRecipe(epochs=2, batch_size=16, lr=1e-2,
                                     pct_start=0.3)  # 0.25 of 4 steps: torch divides by 0
    with caplog.at_level(logging.INFO, logger="protege.progress"):
        _teachers.train_teacher("digits", train, val, seed=0, recipe=recipe)
    assert built[0].sizes == [16, 17, 16, 17]
    assert schedules[0].last_epoch == schedules[0].total_steps  # the cycle ends at the end
    lines = [r.getMessage() for r in caplog.records if r.name == "protege.progress"]
    assert len(lines) == 2 and all("ETA" in line for line in lines)
    assert lines[-1].startswith("training teacher digits seed 0: epoch 2/2")
