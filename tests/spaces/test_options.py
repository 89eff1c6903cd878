"""Per-choice option overrides, and failures that name their cause."""

from __future__ import annotations

import logging
import threading

import pytest
import torch
import torch_pruning as tp
from torch import nn

from protege.spaces import derive

X = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_overrides_by_name_and_glob_first_match_wins(tiny_net):
    space = derive(tiny_net, X[:1], level=3, options={
        "width.pw": [0.5, 1.0], "width.*": (0.25, 1), "rank.block2.*": [1.0],
        "depth.block1": [True],
    })
    assert space.choices["width.pw"] == (0.5, 1.0)
    assert space.choices["width.stem.0"] == (0.25, 1.0)
    assert space.choices["rank.block2.conv1"] == space.choices["rank.block2.conv2"] == (1.0,)
    assert space.choices["depth.block1"] == (True,) and space.choices["depth.block2"] == (False,
                                                                                           True)
    assert space.smallest()["width.pw"] == 0.5


def test_bad_overrides_name_the_problem(tiny_net):
    with pytest.raises(ValueError, match=r"match no choice: \['width.nope', 'depth.\*'\]"):
        derive(tiny_net, X[:1], level=1, options={"width.nope": [1.0], "depth.*": [True]})
    with pytest.raises(ValueError, match="width.pw must be numbers in"):
        derive(tiny_net, X[:1], options={"width.pw": [0.0, 1.0]})
    with pytest.raises(ValueError, match="depth.block1 must be booleans"):
        derive(tiny_net, X[:1], level=2, options={"depth.block1": [0, 1]})


def test_legacy_width_options_still_work(tiny_net):
    space = derive(tiny_net, X[:1], level=2, width_options=(0.5, 1.0))
    assert space.choices["width.pw"] == (0.5, 1.0)


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.inner = nn.Sequential(nn.ReLU(), nn.Linear(5, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.conv(x))


def test_an_untraceable_teacher_names_the_module_and_the_op():
    with pytest.raises(RuntimeError, match=r"module 'inner.1' Linear: RuntimeError: mat1"):
        derive(Broken(), X[:1])


def test_torch_pruning_failure_freezes_widths_with_one_warning(tiny_net, monkeypatch, caplog):
    def fail(self, *args, **kwargs):
        raise IndexError("index 3 is out of bounds")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", fail)
    with caplog.at_level(logging.WARNING, logger="protege.spaces"):
        space = derive(tiny_net, X[:1], level=2)
    assert space.kinds() == {"width": 0, "depth": 2, "rank": 0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "IndexError: index 3 is out of bounds" in warnings[0].message
    with pytest.raises(ValueError, match="found no choice"):
        derive(tiny_net, X[:1], level=1)


def test_a_hanging_analysis_is_cut_short(tiny_net, monkeypatch, caplog):
    release, finished = threading.Event(), threading.Event()

    def hang(self, *args, **kwargs):
        release.wait(60)  # hangs until the test lets it go
        finished.set()

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", hang)
    try:
        with caplog.at_level(logging.WARNING, logger="protege.spaces"):
            space = derive(tiny_net, X[:1], level=2, time_limit_s=0.2)
        # derive returned while the analysis still hung: it did not wait for it
        assert not finished.is_set()
    finally:
        release.set()
    assert space.kinds()["width"] == 0 and "no answer within 0.2 s" in caplog.text


class HardCoded(nn.Module):
    """Reshapes with a channel count it stored: cutting ``conv``'s channels breaks it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.channels = 8
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = (x + self.body(x)).reshape(x.shape[0], self.channels, -1)
        return self.head(x.mean(2))


def test_a_choice_that_breaks_the_student_is_frozen_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="protege.spaces"):
        space = derive(HardCoded().eval(), X[:1], level=2)
    assert "width.conv" not in space.choices and "depth.body" not in space.choices
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "width.conv (in eval mode, in module 'head' (Linear): RuntimeError: " \
        in warnings[0].message
    assert space.materialize(space.smallest())(X).shape == (2, 3)


def test_derive_builds_each_extreme_student_once_when_none_breaks(tiny_net, monkeypatch):
    """The first extreme student is the smallest: it is not built and run a second time."""
    from protege.spaces import SearchSpace

    built: list[dict] = []
    materialize = SearchSpace.materialize

    def counted(self, arch, **kwargs):
        built.append(dict(arch))
        return materialize(self, arch, **kwargs)

    monkeypatch.setattr(SearchSpace, "materialize", counted)
    space = derive(tiny_net, X[:1], level=2)
    assert len(built) == max(len(options) for options in space.choices.values()) - 1
    assert space.repair(built[0]) == space.smallest()
