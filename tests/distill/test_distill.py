from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from protege.distill import (
    DistillConfig,
    cache_teacher_outputs,
    evaluate,
    hinton_loss,
    train_student,
)


def test_hinton_kd_term_vanishes_when_student_matches_teacher():
    logits = torch.randn(8, 5, requires_grad=True)
    targets = torch.randint(0, 5, (8,))
    terms = hinton_loss(logits, logits.detach(), targets, temperature=4.0, alpha=1.0)
    assert set(terms) == {"loss", "task_loss", "kd_loss"}
    assert terms["kd_loss"].abs().item() < 1e-6


def test_hinton_loss_gradients_flow_and_mix_terms():
    student = torch.randn(8, 5, requires_grad=True)
    teacher = torch.randn(8, 5)
    targets = torch.randint(0, 5, (8,))
    terms = hinton_loss(student, teacher, targets, temperature=2.0, alpha=0.3)
    torch.testing.assert_close(terms["loss"].detach(),
                               0.3 * terms["kd_loss"] + 0.7 * terms["task_loss"])
    terms["loss"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


class CountingTeacher(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_teacher_outputs_are_computed_once(tiny_net, tiny_data, tmp_path):
    teacher = CountingTeacher(tiny_net)
    first = cache_teacher_outputs(teacher, tiny_data["train"], cache_dir=tmp_path, batch_size=64)
    calls = teacher.calls
    assert calls == 3  # 192 samples in batches of 64
    for _ in range(3):
        again = cache_teacher_outputs(teacher, tiny_data["train"], cache_dir=tmp_path)
        torch.testing.assert_close(again.logits, first.logits)
    assert teacher.calls == calls
    with torch.no_grad():
        torch.testing.assert_close(first.logits, tiny_net(tiny_data["train"].tensors[0]))


def test_changed_teacher_or_data_invalidates_the_cache(tiny_net, tiny_data, tmp_path):
    first = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path)
    changed = copy.deepcopy(tiny_net)
    with torch.no_grad():
        changed.fc.bias.add_(1.0)
    assert cache_teacher_outputs(changed, tiny_data["train"], cache_dir=tmp_path).key != first.key
    assert cache_teacher_outputs(tiny_net, tiny_data["val"], cache_dir=tmp_path).key != first.key
    assert len(list(tmp_path.glob("teacher_outputs-*.pt"))) == 3


def test_cache_accepts_a_dataloader_and_rejects_bad_data(tiny_net, tiny_data, tmp_path):
    loader = DataLoader(tiny_data["train"], batch_size=50, shuffle=False)
    outputs = cache_teacher_outputs(tiny_net, loader, cache_dir=tmp_path)
    assert outputs.inputs.shape == (192, 1, 8, 8)
    empty = TensorDataset(torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long))
    with pytest.raises(ValueError, match="training data is empty"):
        cache_teacher_outputs(tiny_net, empty, cache_dir=tmp_path)
    bad_labels = TensorDataset(tiny_data["train"].tensors[0], torch.full((192,), 12))
    with pytest.raises(ValueError, match="teacher has 10 outputs"):
        cache_teacher_outputs(tiny_net, bad_labels, cache_dir=tmp_path / "other")


def test_brief_training_reports_each_epoch(tiny_net, tiny_data, tmp_path):
    outputs = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path)
    student = copy.deepcopy(tiny_net)
    reports: list[tuple[int, float]] = []
    result = train_student(student, outputs, tiny_data["val"],
                           config=DistillConfig(epochs=2, batch_size=64),
                           report=lambda epoch, acc: reports.append((epoch, acc)))
    assert [epoch for epoch, _ in reports] == [0, 1]
    assert result.history == tuple(acc for _, acc in reports)
    assert result.val_accuracy == pytest.approx(evaluate(student, tiny_data["val"]))
    assert result.seconds > 0 and not student.training

