"""Networks from the field (issue 18): every choice derive offers builds a different,
working student in both modes, or is frozen with the module and the reason."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from field_nets import (
    AuxHead,
    BroadcastGate,
    CachedBias,
    FailsInTraining,
    GroupNormNet,
    SharedLinear,
    TinyViT,
)
from space_nets import ConcatNet, SENet
from torch import nn

from protege.estimators import count_params
from protege.spaces import SearchSpace, derive
from protege.spaces._lowrank import rank_candidates

IMAGE = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _runs_in_both_modes(student: nn.Module, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    with torch.no_grad():
        assert tuple(student.eval()(x).shape) == shape
        out = student.train()(torch.cat([x, x]))
        assert isinstance(out, torch.Tensor) and tuple(out.shape[1:]) == shape[1:]


def _check_all(space: SearchSpace, teacher: nn.Module, x: torch.Tensor, samples: int = 8) -> None:
    shape = tuple(teacher.eval()(x).shape)
    rng = np.random.default_rng(0)
    for arch in [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(samples)]:
        _runs_in_both_modes(space.materialize(arch), x, shape)


# --- kind 2: a shared module is transformed at every reference -----------------------------


def test_a_shared_layer_is_factorised_at_every_reference():
    teacher = SharedLinear().eval()
    x = torch.randn(1, 8)
    space = derive(teacher, x, level=3)
    assert "rank.shared" in space.choices
    student = space.materialize(space.largest() | {"rank.shared": 0.25})
    assert student.shared is student.again[0]
    assert count_params(student) < count_params(teacher)
    _runs_in_both_modes(student, x, (1, 3))


# --- kind 3: choices that change nothing are not offered ----------------------------------


@pytest.mark.parametrize("net, x", [
    (BroadcastGate(), IMAGE),
    (SENet(), torch.randn(1, 1, 8, 8)),
    (ConcatNet(), torch.randn(1, 1, 8, 8)),
    (GroupNormNet(), IMAGE),
])
def test_every_option_of_every_choice_builds_a_different_student(net, x):
    teacher = net.eval()
    space = derive(teacher, x, level=3)
    base = space.largest()
    for name, options in space.choices.items():
        students = [space.materialize(base | {name: value}) for value in options]
        sizes = [count_params(student) for student in students]
        assert len(set(sizes)) == len(options), f"{name}: {dict(zip(options, sizes, strict=True))}"


def test_a_group_read_through_a_broadcast_is_thinned_correctly_or_frozen(caplog):
    teacher = BroadcastGate().eval()
    with caplog.at_level(logging.INFO, logger="protege.spaces"):
        space = derive(teacher, IMAGE, level=1)
    _check_all(space, teacher, IMAGE)
    if "width.stem" not in space.choices:  # frozen: the log names the layers and says why
        assert any("gate" in r.getMessage() and "broadcast" in r.getMessage()
                   for r in caplog.records)
    else:
        smaller = space.materialize(space.largest() | {"width.stem": 0.5})
        assert count_params(smaller) < count_params(teacher)


def test_rank_options_that_give_the_same_rank_are_offered_once():
    layer = nn.Linear(64, 64)
    (candidate,) = rank_candidates({"l": layer}, options=(0.25, 0.255, 0.375, 1.0))
    assert candidate.options == (0.25, 0.375, 1.0)


# --- kind 4: graphs that differ in training mode --------------------------------------------


def test_an_auxiliary_head_that_runs_only_in_training_is_cut_with_its_input():
    teacher = AuxHead().eval()
    space = derive(teacher, IMAGE, level=3)
    assert any(name.startswith("width.stem") for name in space.choices)
    _check_all(space, teacher, IMAGE)
    assert not teacher.training


def test_a_teacher_that_returns_a_tuple_in_training_is_refused_in_one_line():
    with pytest.raises(ValueError, match="training mode") as info:
        derive(AuxHead(returns="tuple").eval(), IMAGE)
    assert "\n" not in str(info.value) and "AuxHead" in str(info.value)


def test_a_teacher_that_fails_in_training_is_refused_naming_the_module():
    with pytest.raises(ValueError, match="training mode") as info:
        derive(FailsInTraining().eval(), IMAGE)
    assert "'odd'" in str(info.value) and "\n" not in str(info.value)


def test_derive_leaves_the_teachers_normalisation_statistics_alone():
    teacher = AuxHead().eval()
    before = {name: value.clone() for name, value in teacher.state_dict().items()}
    space = derive(teacher, IMAGE, level=1)
    student = space.materialize(space.largest())
    for name, value in student.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


# --- kind 9: every choice builds a working student; what fails is frozen with its module ---


def test_group_norm_keeps_channels_divisible_by_its_groups():
    teacher = GroupNormNet().eval()
    space = derive(teacher, IMAGE, level=3)
    for name, channels in ((n, g.channels) for n, g in space.groups.items()):
        for value in space.choices[name]:
            kept = space.channels(space.largest() | {name: value})[name]
            assert kept % 4 == 0, (name, value, kept, channels)
    _check_all(space, teacher, IMAGE, samples=20)


def test_attention_heads_are_cut_consistently_or_frozen_with_the_module(caplog):
    teacher = TinyViT().eval()
    x = torch.randn(1, 10, 6)
    with caplog.at_level(logging.WARNING, logger="protege.spaces"):
        space = derive(teacher, x, level=3)
    _check_all(space, teacher, x, samples=20)
    frozen = " ".join(r.getMessage() for r in caplog.records)
    if "width.embed" not in space.choices:
        assert "attn" in frozen and "mode" in frozen  # module path and mode of the failure


def test_a_model_caching_non_leaf_tensors_derives_and_its_students_run():
    teacher = CachedBias().eval()
    with torch.enable_grad():
        teacher(IMAGE)  # the cache now holds a tensor with a grad_fn
    space = derive(teacher, IMAGE, level=3)
    _check_all(space, teacher, IMAGE)


def test_every_sampled_student_of_the_field_networks_runs_in_both_modes():
    for net, x in ((GroupNormNet(), IMAGE), (TinyViT(), torch.randn(1, 10, 6)),
                   (BroadcastGate(), IMAGE), (AuxHead(), IMAGE)):
        teacher = net.eval()
        _check_all(derive(teacher, x, level=3), teacher, x, samples=12)
