"""How sure the pick is: a paired comparison with the teacher on validation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from protege.search.pick import validation_margin


class Lookup(nn.Module):
    """Predicts the class stored in its input's first feature (a fixed answer per sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 3).float() + 0 * self.anchor


def data(answers: list[int], labels: list[int]) -> TensorDataset:
    return TensorDataset(torch.tensor(answers, dtype=torch.float32)[:, None],
                         torch.tensor(labels))


def test_a_student_that_agrees_with_the_teacher_is_sure():
    val = data([0, 1, 2, 0], [0, 1, 2, 1])
    margin = validation_margin(Lookup(), Lookup(), val, max_drop=0.01)
    assert margin["difference"] == 0.0 and margin["p_within"] == 1.0 and margin["samples"] == 4


def test_the_margin_counts_only_the_samples_where_they_disagree():
    n = 200
    labels = [0] * n
    teacher_val = data([0] * n, labels)  # the teacher's answers: all right
    student = Lookup()
    # the student is wrong on 4 of 200 samples: 2 points below the teacher
    student_answers = [1] * 4 + [0] * (n - 4)

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(1))
            self.answers = torch.tensor(student_answers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x[:, 1].long()
            return nn.functional.one_hot(self.answers[rows], 3).float() + 0 * self.anchor

    val = TensorDataset(torch.stack([teacher_val.tensors[0][:, 0],
                                     torch.arange(n, dtype=torch.float32)], dim=1),
                        torch.tensor(labels))
    margin = validation_margin(Student(), student, val, max_drop=0.01)
    assert margin["difference"] == pytest.approx(-0.02)
    se = math.sqrt((4 * (1 - 0.02) ** 2 + (n - 4) * 0.02**2) / (n - 1)) / math.sqrt(n)
    assert margin["lower_bound"] == pytest.approx(-0.02 - 1.6449 * se, abs=1e-4)
    assert margin["p_within"] < 0.5  # 2 points below with a 1-point limit: likely outside
    assert validation_margin(Student(), student, val, max_drop=0.05)["p_within"] > 0.95
