"""What the rungs of a multi-fidelity search need from distillation: BatchNorm statistics
recalibrated without a gradient step, and training that goes on from its optimiser state."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from protege.distill import (
    DistillConfig,
    cache_teacher_outputs,
    recalibrate_batchnorm,
    train_student,
)


def test_recalibration_sets_the_statistics_of_the_data_and_nothing_else():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=0.1), nn.Dropout(0.5),
                          nn.Linear(3, 2))
    model.train()
    weights = copy.deepcopy(model.state_dict())
    inputs = torch.randn(257, 4) * 3 + 1  # a last batch of one sample joins the one before
    assert recalibrate_batchnorm(model, inputs, batch_size=64) == 1
    norm = model[1]
    with torch.no_grad():
        features = model[0](inputs)
    # BatchNorm's cumulative average weighs each batch alike (the last one is 65 samples)
    assert torch.allclose(norm.running_mean, features.mean(0), atol=1e-3)
    assert torch.allclose(norm.running_var, features.var(0), rtol=0.05)
    assert norm.momentum == 0.1 and not model.training
    for name, value in model.state_dict().items():
        if not name.startswith("1.running") and not name.endswith("num_batches_tracked"):
            assert torch.equal(value, weights[name]), name


def test_a_model_without_batchnorm_is_left_as_it_was():
    model = nn.Linear(4, 2)
    assert recalibrate_batchnorm(model, torch.randn(8, 4)) == 0


@pytest.fixture
def outputs(tiny_net, tiny_data, tmp_path):
    return cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path / "cache")


def test_training_goes_on_from_its_optimiser_state(tiny_net, tiny_data, outputs):
    config = DistillConfig(epochs=1, batch_size=64).for_init("inherit")
    student = copy.deepcopy(tiny_net)
    first = train_student(student, outputs, tiny_data["val"], config=config)
    state = first.optimizer_state
    assert state is not None and state["state"]
    steps = [float(s["step"]) for s in state["state"].values()]
    assert all(s == first.steps for s in steps)
    second = train_student(student, outputs, tiny_data["val"], config=config, epochs=2,
                           optimizer_state=state)
    after = [float(s["step"]) for s in second.optimizer_state["state"].values()]
    assert all(s == first.steps + second.steps for s in after)  # AdamW's moments went on
    assert len(second.history) == 2


def test_lightning_per_fit_banners_are_held_back_on_gpus_too():
    # A CUDA run of a search printed "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]" per fit.
    import logging

    from protege.distill._trainer import _quiet_lightning

    names = ("pytorch_lightning.accelerators.cuda", "pytorch_lightning.utilities.rank_zero")
    with _quiet_lightning():
        assert all(not logging.getLogger(n).isEnabledFor(logging.INFO) for n in names)
