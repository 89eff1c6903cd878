"""Any number of optimiser steps trains: torch's one-cycle schedule divides by zero
when pct_start x total_steps is 1 (5 steps at 0.2), which once failed every trial."""

from __future__ import annotations

import pytest
import torch
from tiny_nets import make_tiny_net
from torch.utils.data import TensorDataset

from protege.distill import DistillConfig, cache_teacher_outputs, train_student


@pytest.mark.parametrize("steps", [1, 2, 5, 6])
def test_a_run_of_any_length_trains(steps, tmp_path):
    x = torch.randn(10 * steps, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    teacher = make_tiny_net()
    data = TensorDataset(x, teacher(x).argmax(1).detach())
    outputs = cache_teacher_outputs(teacher, data, cache_dir=tmp_path)
    student = make_tiny_net(seed=1)
    result = train_student(student, outputs, data, config=DistillConfig(epochs=1, batch_size=10))
    assert len(result.history) == 1 and 0.0 <= result.val_accuracy <= 1.0
