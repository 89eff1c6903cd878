"""What every arm of a comparison shares: its kind, its budget, the task it runs on, and
the students it trained. The search arm (``_compare``) and the baselines
(``_baselines``) both build on this module and not on each other."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from protege.common import require as _check

__all__ = ["ARM_KINDS", "BUDGET_KINDS", "Arm", "Budget", "CompareTask", "Student", "teacher_facts"]

ARM_KINDS = ("search", "torch_pruning", "uniform")
"""What an arm can be: a protege search, or one of the two baselines."""

BUDGET_KINDS = ("compute", "mac_passes", "time")
"""What a comparison's budget counts: sample-passes, MAC-passes or seconds of training."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    """What every arm of a seed may spend.

    Args:
        kind: ``compute`` (training sample-passes), ``mac_passes`` (training
            sample-passes weighted by the student's forward MACs: an epoch of a 10x
            smaller student costs a tenth of the teacher's) or ``time`` (seconds of
            training).
        trials: Compute budget in trials of the base config: ``(trials x
            distill.epochs + distill.finetune_epochs) x training samples`` sample-passes;
            with ``mac_passes``, that many sample-passes of the teacher, times its MACs.
        seconds: Time budget of each arm (``kind: time``).
    """

    kind: str = "compute"
    trials: int = 40
    seconds: float | None = None

    @property
    def per_mac(self) -> bool:
        """Whether compute is counted in MAC-passes (else sample-passes, or seconds)."""
        return self.kind == "mac_passes"

    def __post_init__(self) -> None:
        _check(self.kind in BUDGET_KINDS, "budget.kind",
               f"must be one of {', '.join(BUDGET_KINDS)}, got {self.kind!r}")
        _check(self.trials >= 1, "budget.trials", f"must be >= 1, got {self.trials}")
        _check(self.kind != "time" or (self.seconds or 0) > 0, "budget.seconds",
               "must be positive with budget.kind: time")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Arm:
    """One contender.

    Args:
        name: Label in tables and folder name.
        kind: One of :data:`ARM_KINDS`.
        set: ``KEY=VALUE`` changes to the base search config for this arm (for a
            baseline, its ``distill.*`` and ``constraints.*`` keys apply).
        ratios: Sweep of a baseline: Torch-Pruning's pruning ratios, or the uniform
            width multipliers; empty derives one (see ``protege.experiments._baselines``).
    """

    name: str
    kind: str = "search"
    set: tuple[str, ...] = ()
    ratios: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check(self.kind in ARM_KINDS, f"arms.{self.name}.kind",
               f"must be one of {', '.join(ARM_KINDS)}, got {self.kind!r}")
        _check(all(0 < r < 1 if self.kind == "torch_pruning" else 0 < r <= 1
                   for r in self.ratios), f"arms.{self.name}.ratios",
               f"must lie in (0, 1), got {list(self.ratios)}")


@dataclasses.dataclass(frozen=True, eq=False)
class CompareTask:
    """The teacher and data every arm shares."""

    name: str
    teacher: nn.Module
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    example_input: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Student:
    """A student an arm trained: what the front, the curve and the pick are made of.

    ``on_front`` False: compute an arm spent that is no point of its front (a one-shot
    arm's supernet training; ``macs`` is then the mean MACs per sample-pass of it).
    """

    accuracy: float
    macs: int
    seconds: float
    passes: int
    source: str
    on_front: bool = True


def teacher_facts(task: CompareTask) -> dict[str, Any]:
    """MACs, parameters, val and test accuracy, classes and chance accuracy of the teacher."""
    from protege.distill import evaluate
    from protege.estimators import count_macs

    macs, params = count_macs(task.teacher, task.example_input)
    with torch.no_grad():
        classes = int(task.teacher.eval()(task.example_input).shape[-1])
    return {"macs": macs, "params": params, "val_accuracy": evaluate(task.teacher, task.val),
            "test_accuracy": evaluate(task.teacher, task.test), "classes": classes,
            "chance": 1.0 / classes}


