"""Sandwich training of a weight-sharing supernet (BigNAS's rule, in-place distillation)."""

from __future__ import annotations

import pytest
import torch
from tiny_nets import make_tiny_net

from protege.distill import DistillConfig, TeacherOutputs, train_supernet
from protege.spaces import Supernet, derive

CONFIG = DistillConfig(batch_size=64, lr=1e-2).for_init("inherit")


class Spy(Supernet):
    """A supernet that records which students each training forward pass ran (the epoch's
    validation of the largest runs in eval mode)."""

    calls: list

    def forward(self, x, arch=None):
        if self.training:
            self.calls.append(None if arch is None else dict(arch))
        return super().forward(x, arch)


def outputs(teacher, data) -> TeacherOutputs:
    x, y = data.tensors
    with torch.no_grad():
        logits = teacher(x)
    return TeacherOutputs(x, y, logits, "test")


def test_each_step_trains_the_largest_the_smallest_and_random_students(tiny_data):
    teacher = make_tiny_net()
    space = derive(teacher, torch.randn(1, 1, 8, 8))
    supernet = Spy(space)
    supernet.calls = []
    before = {k: v.clone() for k, v in supernet.net.state_dict().items()}
    result = train_supernet(supernet, outputs(teacher, tiny_data["train"]), tiny_data["val"],
                            config=CONFIG, epochs=1, students=2, calibration_samples=64)
    steps = result.steps
    assert steps == 3  # 192 samples in batches of 64
    assert len(supernet.calls) == 4 * steps
    for i in range(steps):
        largest, smallest, *random = supernet.calls[4 * i: 4 * i + 4]
        assert largest is None  # the full network itself
        assert smallest == supernet.smallest()
        assert len(random) == 2 and all(isinstance(a, dict) for a in random)
    assert result.sample_passes == 192 * 4 and result.students_per_step == 4
    assert [set(h) for h in result.history] == [{"epoch", "largest", "smallest"}]
    after = supernet.net.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained


def test_inplace_distillation_and_no_random_students(tiny_data):
    teacher = make_tiny_net()
    supernet = Supernet(derive(teacher, torch.randn(1, 1, 8, 8)))
    result = train_supernet(supernet, outputs(teacher, tiny_data["train"]), tiny_data["val"],
                            config=CONFIG, epochs=1, students=0, inplace=True,
                            calibration_samples=64)
    assert result.students_per_step == 2 and result.sample_passes == 192 * 2
    assert not supernet.training


def test_hints_are_refused(tiny_data):
    teacher = make_tiny_net()
    supernet = Supernet(derive(teacher, torch.randn(1, 1, 8, 8)))
    with pytest.raises(ValueError, match="hint_weight"):
        train_supernet(supernet, outputs(teacher, tiny_data["train"]), tiny_data["val"],
                       config=DistillConfig(hint_weight=1.0), epochs=1)
