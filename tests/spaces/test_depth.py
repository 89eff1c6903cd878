"""Depth choices: residual blocks found from the graph, dropped to their shortcut."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from space_nets import DepthwiseNet, Residual, check_space, conv_bn, randomised
from torch import nn

from protege.spaces import Shortcut, derive

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_relu_after_the_add_is_kept_when_the_block_is_dropped(tiny_net):
    space = derive(tiny_net, X[:1], level=2)
    assert [n for n in space.choices if n.startswith("depth.")] == ["depth.block1",
                                                                    "depth.block2"]
    student = space.materialize(space.largest() | {"depth.block1": False})
    assert isinstance(student.block1, Shortcut) and student.block1.post == ("relu",)
    # Dropping the block is f(x) = 0: the teacher with a zeroed last BatchNorm.
    with torch.no_grad():
        tiny_net.block1.bn2.weight.zero_()
        tiny_net.block1.bn2.bias.zero_()
        torch.testing.assert_close(student(X), tiny_net(X))


class Oddities(nn.Module):
    """Same-shape modules that are not ``x + f(x)``, and one that is, under any name."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(1, 8)
        self.scaled = conv_bn(8, 8)  # x * f(x): not residual
        self.biased = conv_bn(8, 8)  # f(x) + 1: not residual
        self.anything = conv_bn(8, 8)  # its add is in the parent: not a block itself
        self.wrapped = nn.Sequential(Residual(conv_bn(8, 8)))  # the inner block is the choice
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x * self.scaled(x)
        x = self.biased(x) + 1
        x = x + self.anything(x)  # residual, but the add is outside the module
        return self.head(self.wrapped(x).mean((2, 3)))


def test_only_modules_that_compute_x_plus_f_x_are_blocks():
    space = derive(randomised(Oddities()), X[:1], level=2, allow_empty_stages=True)
    assert [n for n in space.choices if n.startswith("depth.")] == ["depth.wrapped.0"]


def test_a_stage_of_only_residual_blocks_keeps_one():
    teacher = randomised(DepthwiseNet())
    space = derive(teacher, X[:1], level=2)
    stage = ("depth.stage.0", "depth.stage.1", "depth.stage.2")
    assert space.stages == (stage,)
    assert sum(space.smallest()[name] for name in stage) == 1
    rng = np.random.default_rng(0)
    assert all(any(arch[n] for n in stage) for arch in (space.sample(rng) for _ in range(50)))
    dropped_all = space.largest() | {name: False for name in stage}
    assert sum(space.repair(dropped_all)[n] for n in stage) == 1
    student = space.materialize(dropped_all)
    assert sum(not isinstance(block, Shortcut) for block in student.stage) == 1


def test_empty_stages_when_allowed():
    teacher = randomised(DepthwiseNet())
    space = derive(teacher, X[:1], level=2, allow_empty_stages=True)
    assert space.stages == ()
    student = space.materialize(space.smallest())
    assert all(isinstance(block, Shortcut) for block in student.stage)
    assert student(X).shape == (2, 5)
    with pytest.raises(ValueError, match="drop every block of the stage"):
        derive(teacher, X[:1], level=2, options={"depth.*": [False]})


def test_width_choices_inside_dropped_blocks_do_not_break_students():
    teacher = randomised(DepthwiseNet())
    space = derive(teacher, X[:1], level=3)
    check_space(space, teacher, X, samples=8)
    arch = space.smallest() | {"depth.stage.0": True, "depth.stage.1": False}
    assert space.materialize(arch)(X).shape == (2, 5)


def test_depth_values_must_be_booleans(tiny_net):
    space = derive(tiny_net, X[:1], level=2)
    with pytest.raises(ValueError, match="depth.block1=1 is not an option"):
        space.validate(space.largest() | {"depth.block1": 1})
    np.testing.assert_array_equal(space.encode(space.largest()), np.ones(len(space.choices)))


def test_the_only_block_of_a_stage_is_no_choice():
    teacher = nn.Sequential(conv_bn(1, 8), nn.Sequential(Residual(conv_bn(8, 8))),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    assert "depth.1.0" not in derive(teacher, X[:1], level=2).choices
    space = derive(teacher, X[:1], level=2, allow_empty_stages=True)
    assert space.choices["depth.1.0"] == (False, True)


def test_choices_inside_a_dropped_block_are_canonical(tiny_net):
    space = derive(tiny_net, X[:1], level=3)
    arch = space.largest() | {"depth.block2": False, "width.block2.conv1": 0.25,
                              "rank.block2.conv2": 0.25, "width.pw": 0.5}
    canonical = space.repair(arch)
    assert canonical["width.block2.conv1"] == 1.0 and canonical["rank.block2.conv2"] == 1.0
    assert canonical["width.pw"] == 0.5 and canonical["depth.block2"] is False
    with torch.no_grad():
        torch.testing.assert_close(space.materialize(arch)(X), space.materialize(canonical)(X),
                                   rtol=0, atol=0)
