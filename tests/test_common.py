"""The bottom layer's mode switch and failing-module finder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from protege.common import eval_mode, failing_module, in_mode, module_stack


class _Odd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("odd input")


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), _Odd()), nn.Linear(4, 2))


@pytest.mark.parametrize("training", [True, False])
def test_in_mode_gives_each_submodule_its_own_mode_back(training):
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    net[1].eval()  # a frozen BatchNorm inside a training model
    with in_mode(net, training):
        assert all(module.training == training for module in net.modules())
    assert net.training and net[0].training and not net[1].training
    with eval_mode(net):
        assert not any(module.training for module in net.modules())
    assert net.training and not net[1].training


def test_module_stack_names_the_innermost_module_running_when_it_failed():
    net = _net()
    with module_stack(net) as stack, pytest.raises(RuntimeError):
        net(torch.randn(1, 4))
    assert stack[-1] == "1.1"
    assert not any(module._forward_hooks or module._forward_pre_hooks  # hooks are removed
                   for module in net.modules())


def test_failing_module_returns_the_module_and_the_error_and_refuses_a_working_model():
    net = _net().train()
    where, exc = failing_module(net, torch.randn(1, 4))
    assert where == "1.1" and str(exc) == "odd input" and net.training
    assert failing_module(nn.Sequential(_Odd()), torch.randn(1, 4))[0] == "0"
    with pytest.raises(AssertionError):
        failing_module(nn.Linear(4, 2), torch.randn(1, 4))
