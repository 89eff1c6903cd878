from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from protege.distill import (
    DistillConfig,
    DistillModule,
    cache_teacher_outputs,
    ce_loss,
    dkd_loss,
    hint_loss,
    hinton_loss,
    select_hint_layers,
    train_student,
)


def _logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(16, 6, generator=generator).requires_grad_(True)
    teacher = torch.randn(16, 6, generator=generator) * 3
    targets = torch.randint(0, 6, (16,), generator=generator)
    return student, teacher, targets


def test_dkd_vanishes_when_student_matches_teacher():
    _, teacher, targets = _logits()
    terms = dkd_loss(teacher.clone(), teacher, targets, temperature=4.0, alpha=1.0, beta=8.0)
    assert set(terms) == {"loss", "task_loss", "kd_loss", "tckd_loss", "nckd_loss"}
    for name in ("kd_loss", "tckd_loss", "nckd_loss"):
        assert terms[name].abs().item() < 1e-5
    torch.testing.assert_close(terms["loss"].detach(), terms["task_loss"])


def test_dkd_gradients_flow_and_terms_add_up():
    student, teacher, targets = _logits(1)
    terms = dkd_loss(student, teacher, targets, temperature=2.0, alpha=0.5, beta=3.0)
    assert terms["tckd_loss"] > 0 and terms["nckd_loss"] > 0
    expected = 0.5 * terms["tckd_loss"] + 3.0 * terms["nckd_loss"]
    torch.testing.assert_close(terms["kd_loss"], expected)
    terms["loss"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_dkd_with_unit_weights_equals_hinton_kl_when_the_teacher_is_unsure():
    # KL = TCKD + (1 - p_t^teacher) * NCKD; with a uniform teacher the factor is constant.
    student, _, targets = _logits(2)
    teacher = torch.zeros(16, 6)
    factor = 1 - 1 / 6
    dkd = dkd_loss(student, teacher, targets, temperature=1.0, alpha=1.0, beta=factor)
    kd = hinton_loss(student, teacher, targets, temperature=1.0, alpha=1.0)
    torch.testing.assert_close(dkd["kd_loss"], kd["kd_loss"], rtol=1e-4, atol=1e-5)


def test_ce_loss_is_cross_entropy_with_a_zero_kd_term():
    student, _, targets = _logits(3)
    terms = ce_loss(student, targets)
    assert terms["kd_loss"].item() == 0
    torch.testing.assert_close(terms["loss"], nn.functional.cross_entropy(student, targets))
    terms["loss"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_hint_loss_is_zero_for_equal_features_and_scale_free():
    features = {"a": torch.randn(4, 3, 5), "b": torch.randn(4, 2, 3, 3)}
    assert hint_loss(features, features).item() == 0
    zeros = {name: torch.zeros_like(value) for name, value in features.items()}
    assert hint_loss(zeros, features).item() == pytest.approx(1.0)
    scaled = {name: 100 * value for name, value in features.items()}
    assert hint_loss(zeros, scaled).item() == pytest.approx(1.0)


def test_hint_layers_end_each_stage_of_a_residual_net(tiny_net):
    example = torch.randn(2, 1, 8, 8)
    # block1 ends the 8x8 stage; pw is the last 4x4 output before the flatten and head.
    assert select_hint_layers(tiny_net, example) == ("block1", "pw")
    assert select_hint_layers(tiny_net, example, max_layers=1) == ("pw",)


def test_hint_layers_of_a_sequential_with_pooling_head():
    net = nn.Sequential(
        nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv1d(4, 4, 3, padding=1), nn.ReLU(),
        nn.MaxPool1d(2), nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 3),
    )
    assert select_hint_layers(net, torch.randn(2, 1, 16)) == ("3", "6")


def _thin(net: nn.Module) -> nn.Module:
    """A student with fewer channels in block2's hidden layer and in ``pw`` (same names)."""
    student = copy.deepcopy(net)
    student.pw = nn.Conv2d(16, 6, 1)
    student.fc1 = nn.Linear(6 * 4 * 4, 20)
    return student


def test_hint_adapters_map_student_channels_and_train(tiny_net, tiny_data, tmp_path):
    config = DistillConfig(hint_weight=1.0, lr=1e-2)
    outputs = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path, config=config)
    assert list(outputs.hints) == ["block1", "pw"] and outputs.hint_pool is None
    assert outputs.hints["pw"].shape == (192, 12, 4, 4)
    student = _thin(tiny_net).train()
    module = DistillModule(student, config=config, total_steps=20, hint_layers=("block1", "pw"),
                           hint_shapes={k: tuple(v.shape[1:]) for k, v in outputs.hints.items()},
                           example_input=outputs.inputs[:2])
    assert module.adapters is not None
    assert [a.in_channels for a in module.adapters.adapters] == [8, 6]
    assert [a.out_channels for a in module.adapters.adapters] == [8, 12]
    before = [a.weight.detach().clone() for a in module.adapters.adapters]
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    batch = (outputs.inputs, outputs.targets, outputs.logits, *outputs.hints.values())
    first = None
    for _ in range(20):
        terms = module.loss_terms(batch)
        first = terms["hint_loss"].item() if first is None else first
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    assert module.loss_terms(batch)["hint_loss"].item() < first
    after = [a.weight for a in module.adapters.adapters]
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_hint_features_are_pooled_when_they_do_not_fit(tiny_net, tiny_data, tmp_path):
    config = DistillConfig(hint_weight=1.0)
    outputs = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path,
                                    config=config, hint_cache_mb=0.3)
    assert outputs.hint_pool == 4
    assert outputs.hints["block1"].shape == (192, 8, 4, 4)
    result = train_student(_thin(tiny_net), outputs, tiny_data["val"],
                           config=DistillConfig(hint_weight=1.0, epochs=1, batch_size=64))
    assert len(result.history) == 1


@pytest.mark.parametrize("loss", ["hinton", "dkd", "ce"])
def test_each_loss_trains_a_two_epoch_trial_with_hints(tiny_net, tiny_data, tmp_path, loss):
    config = DistillConfig(loss=loss, hint_weight=0.5, epochs=2, batch_size=64)
    outputs = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path, config=config)
    reports: list[float] = []
    result = train_student(_thin(tiny_net), outputs, tiny_data["val"], config=config,
                           report=lambda epoch, acc: reports.append(acc))
    assert len(result.history) == 2 and list(result.history) == reports
