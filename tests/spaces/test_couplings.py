"""Every kind of coupling and choice, on a tiny network, at every level."""

from __future__ import annotations

import pytest
import torch
from space_nets import ConcatNet, DepthwiseNet, MixerNet, Net1d, SENet, check_space, randomised

from protege.spaces import derive

CASES = {
    "concat": (ConcatNet, (2, 1, 8, 8)),
    "squeeze-excitation": (SENet, (2, 1, 8, 8)),
    "layernorm-mlp": (MixerNet, (2, 6, 8)),
    "conv1d-residual": (Net1d, (2, 1, 40)),
    "depthwise-inverted-residual": (DepthwiseNet, (2, 1, 8, 8)),
}


@pytest.mark.parametrize("level", [1, 2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_students_run_and_full_size_is_the_teacher(case, level):
    build, shape = CASES[case]
    teacher = randomised(build())
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    space = derive(teacher, x[:1], level=level)
    kinds = space.kinds()
    assert kinds["width"] > 0
    assert (kinds["depth"] > 0) == (level >= 2 and case in {
        "layernorm-mlp", "conv1d-residual", "depthwise-inverted-residual"})
    assert kinds["rank"] == 0 or level == 3
    check_space(space, teacher, x)


def test_concat_couples_the_branches_into_the_next_layer():
    teacher = randomised(ConcatNet())
    space = derive(teacher, torch.randn(1, 1, 8, 8))
    student = space.materialize(space.smallest())
    widths = [student.stem[0].out_channels, student.a[0].out_channels, student.b[0].out_channels]
    assert student.mix[0].in_channels == sum(widths) < 28


def test_squeeze_excitation_gate_follows_the_features():
    teacher = randomised(SENet())
    space = derive(teacher, torch.randn(1, 1, 8, 8))
    student = space.materialize(space.smallest())
    assert student.fc2.out_channels == student.stem[0].out_channels < 16


@pytest.mark.parametrize("builder", ["resnet18", "mobilenet_v2"])
def test_torchvision_builders_at_level_3(builder):
    torchvision = pytest.importorskip("torchvision")
    teacher = getattr(torchvision.models, builder)(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    space = derive(teacher, x, level=3)
    kinds = space.kinds()
    assert kinds["width"] > 10 and kinds["depth"] >= 5 and kinds["rank"] > 10
    check_space(space, teacher, x, samples=2)
