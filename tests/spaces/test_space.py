from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from protege.estimators import count_macs
from protege.spaces import WIDTH_OPTIONS, derive

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def space(tiny_net):
    return derive(tiny_net, X[:1])


def test_choices_follow_coupled_channels(space):
    assert list(space.choices) == [
        "width.stem.0", "width.block1.conv1", "width.down", "width.block2.conv1", "width.pw",
        "width.fc1",
    ]
    groups = space.groups
    # The residual add ties the stem to block1's output; the depthwise conv joins block2's group.
    assert {"stem.0", "stem.1", "block1.conv2", "block1.bn2"} <= set(groups["width.stem.0"].members)
    assert {"down", "block2.conv2", "dw"} <= set(groups["width.down"].members)
    assert all(options == WIDTH_OPTIONS for options in space.choices.values())


def test_largest_reproduces_the_teacher(space, tiny_net):
    student = space.materialize(space.largest())
    assert student is not tiny_net
    torch.testing.assert_close(student(X), tiny_net(X))


def test_random_students_run_and_shrink(space, tiny_net):
    rng = np.random.default_rng(0)
    teacher_macs, teacher_params = count_macs(tiny_net, X)
    for _ in range(10):
        arch = space.sample(rng)
        student = space.materialize(arch)
        assert student(X).shape == (4, 10)
        macs, params = count_macs(student, X)
        assert macs <= teacher_macs and params <= teacher_params
    smallest = space.materialize(space.smallest())
    assert smallest.stem[0].in_channels == 1  # input channels never change
    assert smallest.fc.out_features == 10  # classifier outputs never change
    assert smallest.stem[0].out_channels == 2 and smallest.fc1.in_features == 3 * 16


def test_materialize_is_deterministic_and_leaves_teacher_alone(space, tiny_net):
    before = {k: v.clone() for k, v in tiny_net.state_dict().items()}
    arch = space.sample(np.random.default_rng(3))
    a, b = space.materialize(arch), space.materialize(arch)
    torch.testing.assert_close(a(X), b(X), rtol=0, atol=0)
    for key, value in tiny_net.state_dict().items():
        assert torch.equal(value, before[key])


def test_inherit_keeps_the_most_important_channels(tiny_net):
    with torch.no_grad():
        tiny_net.pw.weight.zero_()
        tiny_net.pw.weight[[3, 7, 9]] = 1.0  # three channels carry all the weight
    space = derive(tiny_net, X[:1])
    arch = space.largest() | {"width.pw": 0.25}
    student = space.materialize(arch)
    assert student.pw.out_channels == 3
    assert torch.all(student.pw.weight == 1.0)


def test_scratch_init_differs_from_inherited(space):
    arch = space.sample(np.random.default_rng(1))
    inherited = space.materialize(arch)
    scratch = space.materialize(arch, init="scratch", seed=0)
    assert not torch.equal(inherited.stem[0].weight, scratch.stem[0].weight)
    torch.testing.assert_close(scratch.stem[0].weight,
                               space.materialize(arch, init="scratch", seed=0).stem[0].weight)


def test_encode_is_fixed_length(space):
    rng = np.random.default_rng(0)
    vectors = [space.encode(space.sample(rng)) for _ in range(3)]
    assert all(v.shape == (len(space.choices),) and v.dtype == np.float32 for v in vectors)
    np.testing.assert_array_equal(space.encode(space.largest()), np.ones(len(space.choices)))


def test_bad_architectures_name_the_problem(space):
    with pytest.raises(ValueError, match="missing choices"):
        space.materialize({})
    with pytest.raises(ValueError, match="width.pw=0.3 is not an option"):
        space.materialize(space.largest() | {"width.pw": 0.3})
    with pytest.raises(ValueError, match="unknown choices"):
        space.materialize(space.largest() | {"depth.x": True})


def test_derive_rejects_bad_input(tiny_net):
    with pytest.raises(ValueError, match="level 4 is not available"):
        derive(tiny_net, X[:1], level=4)
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        derive(lambda x: x, X[:1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'nope' is not in the model"):
        derive(tiny_net, X[:1], ignored=["nope"])


def test_ignored_layers_keep_their_width(tiny_net):
    space = derive(tiny_net, X[:1], ignored=["pw"])
    assert "width.pw" not in space.choices


def test_grouped_convolutions_stay_fixed():
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(),
                        nn.Linear(6, 3)).eval()
    x = torch.randn(2, 1, 8, 8)
    space = derive(net, x[:1])
    assert list(space.choices) == ["width.6"]
    assert space.materialize(space.smallest())(x).shape == (2, 3)


def test_torchvision_resnet18_small_input():
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    space = derive(net, x)
    torch.testing.assert_close(space.materialize(space.largest())(x), net(x))
    student = space.materialize(space.sample(np.random.default_rng(0)))
    assert student(x).shape == (1, 10)
    assert student.fc.out_features == 10
