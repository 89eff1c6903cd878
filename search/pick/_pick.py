"""Choosing the student to return: the cheapest that meets the limit after its fine-tune
(cheapest by the first cost objective: MACs, parameters or predicted latency).

Brief trials misjudge what a student reaches when fine-tuned, so :func:`bisect` may
spend several fine-tunes (``Config.finetunes``) to find the smallest student on the
front that meets the accuracy limit after its own fine-tune.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import nn
from torch.utils.data import TensorDataset

from protege import distill
from protege.distill import TeacherOutputs, evaluate
from protege.search._config import Config
from protege.search._pareto import pareto_indices
from protege.search._profile import TeacherProfile
from protege.search._records import Pick, TrialRecord
from protege.spaces import SearchSpace

__all__ = ["accuracy_floor", "bisect", "cheapest_within", "choose", "cost_of", "finetune_student",
           "pick_cost", "spread_front", "validation_margin"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

Tune = Callable[[TrialRecord], tuple[Pick, nn.Module]]
"""Fine-tunes one trial's student: the pick it would be and the module."""


def accuracy_floor(teacher: TeacherProfile | float, config: Config) -> float:
    """The lowest validation accuracy within ``constraints.max_accuracy_drop`` of the
    teacher (its profile, or its validation accuracy as a fraction)."""
    accuracy = teacher.val_accuracy if isinstance(teacher, TeacherProfile) else float(teacher)
    return _floor(accuracy, config.constraints.max_accuracy_drop)


def _floor(accuracy: float, drop: float) -> float:
    """The lowest accuracy within ``drop`` of ``accuracy`` (rounding forgiven)."""
    return accuracy - drop - 1e-12


def pick_cost(objectives: Sequence[str]) -> str:
    """The cost a pick minimises: the first cost among the objectives (``macs``,
    ``params`` or ``latency``, the predicted one), so that a latency search returns the
    fastest student within the limit, not the one with the fewest MACs."""
    return objectives[1] if len(objectives) > 1 else "macs"  # accuracy comes first


def cost_of(record: TrialRecord, cost: str) -> float:
    """``record``'s value of the cost objective ``cost`` (``TrialRecord.costs``); ``inf``
    where it was not measured, so such a student sorts last."""
    value = record.costs()[cost]
    return float(value) if value is not None else math.inf


def _cost(record: TrialRecord, cost: str) -> tuple[float, float]:
    """Sort key of ``record`` by ``cost``, ties broken by MACs; unknown costs last."""
    return cost_of(record, cost), cost_of(record, "macs")


def cheapest_within(items: Sequence[T], *, floor: float, accuracy: Callable[[T], float],
                    cost: Callable[[T], tuple[float, ...]]) -> tuple[T, bool] | None:
    """The pick's rule on any rows: the cheapest item by ``cost`` whose ``accuracy`` is at
    least ``floor`` (True), the more accurate among equally cheap ones; else the most
    accurate item, the cheapest among equally accurate ones (False). Remaining ties go to
    the item that comes first. None when ``items`` is empty."""
    if not items:
        return None
    rows = list(enumerate(items))
    within = [(i, item) for i, item in rows if accuracy(item) >= floor]
    if within:
        return min(within, key=lambda row: (cost(row[1]), -accuracy(row[1]), row[0]))[1], True
    return max(rows, key=lambda row: (accuracy(row[1]), tuple(-c for c in cost(row[1])),
                                      -row[0]))[1], False


def choose(done: Sequence[TrialRecord], *, floor: float, cost: str = "macs",
           below_best: float | None = None) -> tuple[TrialRecord, bool] | None:
    """The cheapest completed student by ``cost`` (:func:`pick_cost`, then MACs) at or
    above ``floor`` (True), else the most accurate one, the cheapest by ``cost`` among
    equally accurate ones (False), by :func:`cheapest_within`, ties to the lower trial
    number; None when nothing completed.

    With ``below_best`` (an accuracy drop, a fraction), when nothing reaches ``floor``
    the student returned (still False) is the cheapest within ``below_best`` of the most
    accurate one instead: the limit taken relative to the best student scored, for
    scores that sit below what a fine-tune reaches by a similar amount (slices of a
    briefly trained supernet, ``oneshot.relative_limit``).
    """
    done = sorted((r for r in done if r.outcome.completed and r.accuracy is not None),
                  key=lambda r: r.number)
    chosen = cheapest_within(done, floor=floor, accuracy=lambda r: r.accuracy or 0.0,
                             cost=lambda r: _cost(r, cost))
    if chosen is None or chosen[1] or below_best is None:
        return chosen
    relative = cheapest_within(done, floor=_floor(chosen[0].accuracy or 0.0, below_best),
                               accuracy=lambda r: r.accuracy or 0.0,
                               cost=lambda r: _cost(r, cost))
    assert relative is not None  # the most accurate itself is within
    return relative[0], False


def bisect(first: TrialRecord, done: Sequence[TrialRecord], *, tune: Tune,
           finetunes: int, cost: str = "macs") -> tuple[Pick, nn.Module]:
    """Fine-tune ``first``, then, while fine-tunes remain, bisect for the cheapest student
    by ``cost`` that meets the limit after its own fine-tune, assuming fine-tuned accuracy
    grows with the cost: below ``first`` (among the cheaper members of the (accuracy,
    cost) front) when it meets, above it (among every costlier student, by cost: brief
    accuracy says little about them) when it misses. Returns the cheapest that met, else
    the most accurate.
    """
    at_first = _cost(first, cost)
    cheaper = [r for r in done if _cost(r, cost) < at_first]
    below = sorted((cheaper[i] for i in pareto_indices([(r.accuracy or 0.0, _cost(r, cost)[0])
                                                         for r in cheaper])),
                   key=lambda r: (_cost(r, cost), r.number))
    above = sorted((r for r in done if _cost(r, cost) > at_first),
                   key=lambda r: (_cost(r, cost), r.number))
    front = [*below, first, *above]
    at = len(below)
    tried = [tune(first)]
    lo, hi = (0, at) if tried[0][0].meets_constraints else (at + 1, len(front))
    while len(tried) < finetunes and lo < hi:  # the answer lies in front[lo:hi]
        mid = (lo + hi) // 2
        tried.append(tune(front[mid]))
        meets = tried[-1][0].meets_constraints
        logger.info("bisecting the front: trial %d (%d MACs) %s the limit after fine-tuning",
                    front[mid].number, front[mid].macs or 0, "meets" if meets else "misses")
        lo, hi = (lo, mid) if meets else (mid + 1, hi)
    by_number = {r.number: r for r in front}
    met = [t for t in tried if t[0].meets_constraints]
    best = (min(met, key=lambda t: _cost(by_number[t[0].trial], cost)) if met
            else max(tried, key=lambda t: t[0].val_accuracy))
    finetuned = tuple({"trial": p.trial, "macs": p.macs, "search_accuracy": p.search_accuracy,
                       "val_accuracy": p.val_accuracy, "meets": p.meets_constraints,
                       "seconds": p.finetune_seconds} for p, _ in tried)
    return dataclasses.replace(best[0], finetuned=finetuned), best[1]


def spread_front(done: Sequence[TrialRecord], *, k: int, low: float, high: float,
                 cost: str = "macs") -> list[TrialRecord]:
    """Up to ``k`` members of the (accuracy, ``cost``) Pareto front of ``done`` whose cost
    lies in ``[low, high)``, at evenly spaced log-cost, the cheapest always included: the
    front members ``oneshot.finetune_front`` fine-tunes, so that fine-tuned students span
    the front's small end. Each of ``k`` targets spaced evenly in log-cost between the
    cheapest and the costliest candidate takes the nearest candidate not yet taken.

    Returns:
        The members chosen, cheapest first (all candidates when there are at most ``k``).
    """
    done = [r for r in done if r.outcome.completed and r.accuracy is not None]
    front = [done[i] for i in pareto_indices([(r.accuracy or 0.0, cost_of(r, cost))
                                              for r in done])]
    candidates = sorted((r for r in front if low <= cost_of(r, cost) < high and
                         0 < cost_of(r, cost) < math.inf), key=lambda r: (_cost(r, cost), r.number))
    if k <= 0 or len(candidates) <= k:
        return candidates[:max(k, 0)]
    logs = [math.log(cost_of(r, cost)) for r in candidates]
    taken: list[int] = []
    for j in range(k):
        target = logs[0] + (logs[-1] - logs[0]) * j / (k - 1) if k > 1 else logs[0]
        taken.append(min((i for i in range(len(candidates)) if i not in taken),
                         key=lambda i: (abs(logs[i] - target), i)))
    return [candidates[i] for i in sorted(taken)]


def finetune_student(record: TrialRecord, *, floor: float, space: SearchSpace,
                     outputs: TeacherOutputs, val: TensorDataset, test: TensorDataset | None,
                     config: Config, device: torch.device, accelerator: str,
                     teacher: nn.Module) -> tuple[Pick, nn.Module]:
    """Trial ``record``'s student after the final fine-tune (``distill.finetune_epochs`` on
    all the training data), scored on validation and, when given, test data."""
    student = space.materialize(record.arch, init=config.init, seed=config.seed + record.number)
    student = student.to(device)
    final = config.distill.for_finetune()  # all data, no trial step/seconds budget
    logger.info("fine-tuning trial %d for %d epochs", record.number, final.budget_epochs)
    result = distill.train_student(student, outputs, val, config=final, seed=config.seed,
                           accelerator=accelerator, teacher=teacher,
                           progress=f"fine-tune of trial {record.number}")
    student = student.cpu().eval()
    pick = Pick(
        trial=record.number, arch=record.arch, macs=record.macs or 0, params=record.params or 0,
        search_accuracy=record.accuracy or 0.0, val_accuracy=result.val_accuracy,
        test_accuracy=evaluate(student, test) if test is not None else None,
        meets_constraints=result.val_accuracy >= floor,
        finetune_seconds=round(result.seconds, 3),
    )
    return pick, student


@torch.no_grad()
def _correct(model: nn.Module, data: TensorDataset) -> torch.Tensor:
    """Whether ``model`` gets each sample of ``data`` right: ``(samples,)`` bool."""
    from protege.common import eval_mode
    from protege.distill import batch_loader

    device = next(model.parameters(), torch.empty(0)).device
    right = []
    with eval_mode(model):
        for x, y in batch_loader(data, 1024, shuffle=False, seed=0):
            right.append(model(x.to(device)).argmax(dim=-1).cpu() == y)
    return torch.cat(right) if right else torch.zeros(0, dtype=torch.bool)


def validation_margin(student: nn.Module, teacher: nn.Module, val: TensorDataset, *,
                      max_drop: float) -> dict[str, float]:
    """How sure it is that ``student`` is within ``max_drop`` of ``teacher``'s accuracy.

    A paired comparison on the same validation samples: only the samples where exactly
    one of the two is right carry information (as in McNemar's test). With ``d`` the
    per-sample difference (student right minus teacher right), the mean difference has
    standard error ``sd(d) / sqrt(n)`` (normal approximation).

    Returns:
        ``samples``; ``difference`` (student minus teacher accuracy, a fraction);
        ``lower_bound``, its one-sided 95 % lower bound; ``p_within``, the approximate
        probability that the true difference is at least ``-max_drop``; ``max_drop``.
    """
    d = (_correct(student, val).double() - _correct(teacher, val).double())
    n = len(d)
    difference = float(d.mean()) if n else 0.0
    se = float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    if se == 0.0:
        p_within = 1.0 if difference >= -max_drop else 0.0
        lower = difference
    else:
        p_within = 0.5 * (1.0 + math.erf((difference + max_drop) / (se * math.sqrt(2.0))))
        lower = difference - 1.6448536269514722 * se
    return {"samples": n, "difference": round(difference, 6), "lower_bound": round(lower, 6),
            "p_within": round(p_within, 4), "max_drop": max_drop}
