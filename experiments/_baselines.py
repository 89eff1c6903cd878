"""Baseline arms: Torch-Pruning's magnitude pruning sweep, and uniform width from scratch.

Both train a sweep of ``k`` students with the arm's distillation settings (the same
KD loss as the search arms) and share the arm's budget out between them: under a
compute budget ``B`` every student gets ``B / (k x samples)`` epochs (the remainder
one epoch at a time to the first students); under a budget in MAC-passes every student
gets an equal share of ``B`` as whole epochs at its own MACs (what a student's whole
epochs leave over goes to the students after it), so the smaller ones train longer;
under a time budget every student gets ``distill.finetune_epochs`` until the seconds
are spent.

- ``torch_pruning``: a copy of the teacher pruned by ``torch_pruning``'s
  ``MagnitudePruner`` (L2 magnitude importance, the same ratio in every layer, the
  classifier's outputs kept) at each ratio; by default ``k = round(B / (samples x
  finetune_epochs))`` ratios evenly spaced in [0.1, 0.8], so each pruned network is
  fine-tuned for as many epochs as a search's pick.
- ``uniform``: the student of the derived space whose every width multiplier is
  the same (one per multiplier every width choice offers), re-initialised
  (``init="scratch"``) and trained from scratch.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protege import distill
from protege.estimators import count_macs
from protege.experiments._arms import Arm, Budget, CompareTask, Student
from protege.search import Config
from protege.search.pick import accuracy_floor, cheapest_within
from protege.spaces import derive

__all__ = ["SWEEP_RANGE", "prune_uniform", "run_baseline", "split_epochs"]

logger = logging.getLogger(__name__)

SWEEP_RANGE = (0.1, 0.8)
"""Pruning ratios of the default Torch-Pruning sweep: from 1.2x to about 25x fewer MACs."""


def split_epochs(total: int, parts: int) -> list[int]:
    """``total`` epochs shared by ``parts`` students as evenly as whole epochs allow."""
    if parts < 1 or total < parts:
        raise ValueError(f"a budget of {total} epochs cannot train {parts} students "
                         "(raise budget.trials or give fewer ratios)")
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def _classifier(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The last linear layer whose outputs are the logits: its outputs must not be cut."""
    with torch.no_grad():
        classes = model.eval()(example_input).shape[-1]
    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == classes]
    if not heads:
        raise ValueError("no nn.Linear produces the teacher's logits: cannot protect the head")
    return heads[-1]


def prune_uniform(teacher: nn.Module, example_input: torch.Tensor, ratio: float) -> nn.Module:
    """A copy of ``teacher`` with ``ratio`` of every layer's channels cut by L2 magnitude."""
    import torch_pruning as tp

    model = copy.deepcopy(teacher).eval()
    pruner = tp.pruner.MagnitudePruner(
        model, example_input, importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio, ignored_layers=[_classifier(model, example_input)],
    )
    pruner.step()
    return model


def _sweep(task: CompareTask, arm: Arm, config: Config, seed: int,
           ) -> tuple[list[float], Callable[[float], nn.Module]]:
    if arm.kind == "torch_pruning":
        return list(arm.ratios), lambda r: prune_uniform(task.teacher, task.example_input, r)
    space = derive(task.teacher, task.example_input, level=1, **config.space.derive_kwargs())
    widths = [w for w in next(iter(space.choices.values()))
              if all(w in options for options in space.choices.values())]
    if arm.ratios:
        missing = [w for w in arm.ratios if w not in widths]
        if missing:
            raise ValueError(f"arms.{arm.name}.ratios: {missing} are not width options every "
                             f"choice offers ({widths})")
        widths = list(arm.ratios)

    def build(width: float) -> nn.Module:
        arch = {name: width for name in space.choices}
        return space.materialize(arch, init="scratch", seed=seed)

    return widths, build


def run_baseline(task: CompareTask, arm: Arm, config: Config, *, budget: Budget,
                 total: int | None, teacher: dict[str, Any], out: Path,
                 ) -> tuple[list[Student], dict[str, Any] | None]:
    """Train a baseline's sweep; return its students and its tested pick. ``teacher``:
    :func:`~protege.experiments._arms.teacher_facts` of ``task``."""
    samples = len(task.train)
    teacher_macs = teacher["macs"]
    outputs = distill.cache_teacher_outputs(task.teacher, task.train, cache_dir=out / "cache",
                                            config=config.distill)
    finetune = config.distill.finetune_epochs or config.distill.budget_epochs
    ratios, build = _sweep(task, arm, config, config.seed)
    if total is not None:
        if arm.kind == "torch_pruning" and not ratios:
            passes = total // teacher_macs if budget.per_mac else total  # sample-passes
            k = max(1, round(passes / (samples * finetune)))
            low, high = SWEEP_RANGE
            ratios = [round(low + (high - low) * i / max(1, k - 1), 4) for i in range(k)]
        epochs: Sequence[int | None] = (
            [None] * len(ratios) if budget.per_mac  # set below, once its MACs are known
            else split_epochs(total // samples, len(ratios)))
    else:
        if not ratios:
            low, high = SWEEP_RANGE
            ratios = [round(low + (high - low) * i / 8, 4) for i in range(9)]
        epochs = [finetune] * len(ratios)
    students: list[Student] = []
    models: list[nn.Module] = []
    start = time.perf_counter()
    left = total
    for i, (ratio, n_epochs) in enumerate(zip(ratios, epochs, strict=True)):
        if total is None and time.perf_counter() - start >= (budget.seconds or 0):
            logger.info("%s: time budget spent after %d students", arm.name, len(students))
            break
        student = build(ratio)
        macs, _ = count_macs(student, task.example_input)
        if n_epochs is None:  # MAC-passes: an equal share of what is left, in whole epochs
            assert left is not None
            n_epochs = left // (len(ratios) - i) // (samples * macs)
            if n_epochs < 1:
                raise ValueError(f"arms.{arm.name}: a share of the budget cannot train its "
                                 f"ratio-{ratio} student for one epoch; raise budget.trials "
                                 "or give fewer ratios")
            left -= n_epochs * samples * macs
        result = distill.train_student(student, outputs, task.val, config=config.distill,
                                       epochs=n_epochs, seed=config.seed, teacher=task.teacher)
        logger.info("%s ratio %s: %.3fx MACs, val %.4f (%d epochs, %.1fs)", arm.name, ratio,
                    macs / teacher_macs, result.val_accuracy, n_epochs, result.seconds)
        students.append(Student(result.val_accuracy, macs, result.seconds, n_epochs * samples,
                                f"{arm.kind} {ratio}"))
        models.append(student)
    if not students:
        return students, None
    found = cheapest_within(range(len(students)),
                            floor=accuracy_floor(teacher["val_accuracy"], config),
                            accuracy=lambda i: students[i].accuracy,
                            cost=lambda i: (students[i].macs,))
    assert found is not None  # students is not empty
    best, within = found
    chosen = students[best]
    pick = {"source": chosen.source, "macs": chosen.macs, "macs_ratio": chosen.macs / teacher_macs,
            "val_accuracy": chosen.accuracy,
            "test_accuracy": distill.evaluate(models[best], task.test),
            "meets_val_limit": within}
    return students, pick
