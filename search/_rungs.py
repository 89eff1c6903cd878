"""Multi-fidelity search: a ladder of rungs, promotion by non-dominated rank (MO-ASHA).

``method: rungs`` spends a study's compute by fidelity. Every sampled student is scored
at rung 0 (inherited weights, BatchNorm recalibrated, no gradient step: one trial of
the sampler's study, told with that score). A student in the top ``1/eta`` of its rung
by non-dominated rank over (accuracy at that rung, costs), ties broken by crowding
distance, is promoted: trained on from its previous rung's weights and optimiser state
to the next rung's epochs. This is asynchronous successive halving (ASHA, Li et al.,
2020) with the multi-objective promotion of MO-ASHA (Schmucker et al., 2021; Syne
Tune's ``MOASHA``). The top rung is the final fine-tune.

Promotions are trials of a second study in the same storage
(:data:`~protege.search._attrs.RUNGS_STUDY_NAME`), so workers on one storage share
them: any worker may promote any student, and a claim protocol (the lowest trial
number wins) keeps a student from being promoted to one rung twice. Weights and
optimiser state live in the run folder's ``rungs/`` (one file per student and rung).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from protege.search import _attrs as attrs
from protege.search._config import PROMOTION_RULES, TIE_BREAKS
from protege.search._pareto import dominates, hypervolume
from protege.search._records import Outcome, TrialRecord
from protege.search._storage import worker_id
from protege.spaces import Architecture, SearchSpace

if TYPE_CHECKING:  # _trial imports this module (checkpoints): no import cycle at run time
    from protege.search._trial import StudentEvaluator

__all__ = ["TIE_BREAKS", "PROMOTION_RULES", "LimitRule", "Promotion", "PromotionResult",
           "checkpoint_path", "claim_promotion", "claimed", "crowding_distances",
           "enqueue_ladder", "hypervolume_contributions",
           "load_checkpoint", "merge_promotions", "next_promotion", "nondominated_ranks",
           "predicted_gap", "promotion_order", "run_promotion",
           "save_checkpoint", "tell_promotion", "train_promotion", "uniform_ladder"]

logger = logging.getLogger(__name__)

_CLAIM_WAIT_S = 10.0
"""How long a claim waits for an earlier promotion trial to name its student and rung."""


# -- promotion rule --------------------------------------------------------------------------


def nondominated_ranks(points: Sequence[Sequence[float]]) -> list[int]:
    """Non-dominated sorting (NSGA-II, Deb et al., 2002): 0 for the Pareto front, 1 for
    the front of what remains, and so on. Points are ``(accuracy, cost, ...)``: accuracy
    maximised, costs minimised."""
    ranks = [-1] * len(points)
    left = set(range(len(points)))
    rank = 0
    while left:
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def crowding_distances(points: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each point within ``points`` (one front): the sum
    over objectives of the normalised gap between its neighbours; ``inf`` at the ends."""
    n = len(points)
    distance = [0.0] * n
    if n <= 2:
        return [math.inf] * n
    for m in range(len(points[0])):
        order = sorted(range(n), key=lambda i: points[i][m])
        low, high = points[order[0]][m], points[order[-1]][m]
        distance[order[0]] = distance[order[-1]] = math.inf
        if high <= low:
            continue
        for before, i, after in zip(order, order[1:], order[2:], strict=False):
            distance[i] += (points[after][m] - points[before][m]) / (high - low)
    return distance


def hypervolume_contributions(points: Sequence[Sequence[float]], *,
                              reference: Sequence[float]) -> list[float]:
    """Each point's exclusive hypervolume contribution: the volume (against
    ``reference``) that only it dominates, ``HV(all) - HV(all but it)``. Points are
    ``(accuracy, cost, ...)``: accuracy maximised, costs minimised."""
    whole = hypervolume(points, reference=reference)
    return [whole - hypervolume([p for j, p in enumerate(points) if j != i],
                                reference=reference) for i in range(len(points))]


def _reference(points: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """The nadir of ``points`` (lowest accuracy, highest costs) moved out by a tenth of
    each objective's range, so that the extreme points keep a (small) contribution."""
    columns = list(zip(*points, strict=True))
    spans = [max(c) - min(c) for c in columns]
    return (min(columns[0]) - 0.1 * spans[0] - 1e-12,
            *(max(c) + 0.1 * span + 1e-12 for c, span in zip(columns[1:], spans[1:],
                                                            strict=True)))


def promotion_order(points: Sequence[Sequence[float]], *,
                    tie_break: str = "crowding") -> list[int]:
    """Indices of ``points`` best first: by non-dominated rank, then within the rank by
    ``tie_break`` (larger first), then by index (the earlier student).

    ``crowding``: NSGA-II's crowding distance (Deb et al., 2002), which puts the ends of
    a front first. ``hypervolume``: the exclusive hypervolume contribution within the
    rank (as SMS-EMOA, Beume et al., 2007), against the nadir of all ``points`` moved out
    by a tenth of each range; it puts the knees of a front first, and a front's ends
    (the largest, most accurate student; the smallest, least accurate) last.

    Raises:
        ValueError: An unknown ``tie_break``.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {', '.join(TIE_BREAKS)}, got {tie_break!r}")
    ranks = nondominated_ranks(points)
    score = [0.0] * len(points)
    reference = _reference(points) if points and tie_break == "hypervolume" else ()
    for rank in set(ranks):
        members = [i for i, r in enumerate(ranks) if r == rank]
        front = [points[i] for i in members]
        values = (crowding_distances(front) if tie_break == "crowding"
                  else hypervolume_contributions(front, reference=reference))
        for i, d in zip(members, values, strict=True):
            score[i] = d
    return sorted(range(len(points)), key=lambda i: (ranks[i], -score[i], i))


def predicted_gap(rungs: Sequence[float], ladder: Sequence[int], *, teacher_accuracy: float,
                  exponent: float | None = None) -> float:
    """A student's predicted accuracy gap to the teacher (accuracy units, teacher minus
    student) at the top rung, from its accuracy at the rungs it reached below the top
    (``rungs[0]`` the untrained rung 0, ``rungs[k]`` its highest).

    The gap is taken to shrink as a power law in epochs, ``gap(E) = c * E**-alpha``
    (the learning-curve family of Domhan et al., 2015, with the teacher as the asymptote
    a distilled student approaches). With two trained rungs (``k >= 2``) ``alpha`` is
    fitted to the student's own last two, ``gap(E_top) = g_k * (g_k / g_{k-1}) **
    (log(E_top / E_k) / log(E_k / E_{k-1}))``; with one, ``exponent`` is used (the
    study's students' :meth:`LimitRule.exponent`). A student with no gap left, one
    that did not close its gap between its two rungs, or one with a single trained rung
    and no ``exponent`` is predicted to keep the gap it has.

    Args:
        rungs: Validation accuracy at each rung reached, rung 0 first (fractions).
        ladder: Epochs in all at each rung (``Config.ladder``).
        teacher_accuracy: The teacher's validation accuracy (fraction).
        exponent: ``alpha`` for a student with one trained rung; None: none known.
    """
    top = len(ladder) - 1
    k = len(rungs) - 1
    assert top > k, "predicted_gap predicts the top rung from the rungs below it"
    gap = teacher_accuracy - rungs[k]
    if k < 1 or gap <= 0:
        return gap
    if k == 1:
        alpha = exponent or 0.0
    else:
        before = teacher_accuracy - rungs[k - 1]
        if before <= gap:
            return gap
        alpha = math.log(before / gap) / math.log(ladder[k] / ladder[k - 1])
    return gap * (ladder[top] / ladder[k]) ** -max(alpha, 0.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LimitRule:
    """``rungs.promotion: limit``: the promotions above rung 0 serve the pick (the smallest
    student at the top rung within the accuracy limit).

    Of the students at a rung ``k >= 1``, those predicted to end within the limit at
    the top (:func:`predicted_gap`, plus the largest optimism the prediction showed on
    students already at the top) and cheaper than the pick the top holds now go up
    first, cheapest by ``cost`` first; every other student follows in MO-ASHA's order.
    The number promoted stays ASHA's (the top ``1/eta``), and rung 0 (inherited weights,
    no training: nothing to extrapolate) promotes by MO-ASHA's order alone. Where no
    student is predicted within the limit, this is MO-ASHA's rule unchanged.

    Attributes:
        teacher_accuracy: The teacher's validation accuracy (fraction).
        floor: The lowest validation accuracy within the limit
            (:func:`~protege.search.pick.accuracy_floor`).
        ladder: Epochs in all at each rung (``Config.ladder``).
        cost: The cost the pick minimises (:func:`~protege.search.pick.pick_cost`).
    """

    teacher_accuracy: float
    floor: float
    ladder: tuple[int, ...]
    cost: str = "macs"

    def exponent(self, students: Sequence[TrialRecord]) -> float | None:
        """The power law's ``alpha`` for students with one trained rung: the median of
        ``log(g_1 / g_2) / log(E_2 / E_1)`` over the students that reached rung 2 (none
        below 0); None while no student has (or the ladder has no rung 2 below the top)."""
        if len(self.ladder) < 3:
            return None
        span = math.log(self.ladder[2] / self.ladder[1])
        alphas = [max(0.0, math.log(g1 / g2) / span) for r in students if len(r.rungs) > 2
                  for g1, g2 in [(self.teacher_accuracy - r.rungs[1],
                                  self.teacher_accuracy - r.rungs[2])]
                  if g1 > 0 and g2 > 0]
        return statistics.median(alphas) if alphas else None

    def predict(self, record: TrialRecord, rung: int, exponent: float | None) -> float:
        """``record``'s predicted gap to the teacher at the top from its rungs up to
        ``rung`` (:func:`predicted_gap`)."""
        return predicted_gap(record.rungs[:rung + 1], self.ladder,
                             teacher_accuracy=self.teacher_accuracy, exponent=exponent)

    def margin(self, students: Sequence[TrialRecord], exponent: float | None = None) -> float:
        """The largest amount by which a student now at the top did worse than predicted
        from the rung below it (0 when none did): added to every prediction. ``exponent``:
        :meth:`exponent` of ``students``, if known (else computed)."""
        top = len(self.ladder) - 1
        if exponent is None:
            exponent = self.exponent(students)
        errors = [(self.teacher_accuracy - r.rungs[top]) - self.predict(r, top - 1, exponent)
                  for r in students if len(r.rungs) > top]
        return max([0.0, *errors])

    def candidates(self, at: Sequence[TrialRecord], rung: int,
                   students: Sequence[TrialRecord] | None = None) -> list[int]:
        """Indices of the students of ``at`` (those with a result at ``rung``, ``rung >=
        1``) predicted to end within the limit at the top and cheaper than the pick the top
        holds now (:func:`~protege.search.pick.choose` at the top rung), cheapest first
        (then the earlier student). ``students``: every scored student (the exponent, the
        margin and the pick come from them); None: ``at``."""
        # the pick imports the profile, which imports _trial, which imports this module
        from protege.search.pick import choose, cost_of

        top = len(self.ladder) - 1
        everyone = at if students is None else students
        chosen = choose([r for r in everyone if len(r.rungs) > top], floor=self.floor,
                        cost=self.cost)
        pick = cost_of(chosen[0], self.cost) if chosen is not None and chosen[1] else math.inf
        exponent = self.exponent(everyone)
        margin = self.margin(everyone, exponent)
        within = self.teacher_accuracy - self.floor
        return sorted((i for i, r in enumerate(at) if cost_of(r, self.cost) < pick
                       and self.predict(r, rung, exponent) + margin <= within),
                      key=lambda i: (cost_of(at[i], self.cost), i))


@dataclasses.dataclass(frozen=True)
class Promotion:
    """A student due to go up a rung, and why (with the numbers)."""

    student: int
    rung: int
    reason: str


def next_promotion(students: Sequence[TrialRecord], taken: set[tuple[int, int]], *,
                   eta: int, top: int, objectives: Sequence[str],
                   affordable: Callable[[TrialRecord, int], bool] | None = None,
                   tie_break: str = "crowding",
                   limit: LimitRule | None = None, screen: bool = True) -> Promotion | None:
    """The student to promote next and the rung it goes to, or None (sample a new one).

    ASHA's rule, highest rung first: of the ``n`` students with a result at rung ``k``,
    the best ``n // eta`` by :func:`promotion_order` over (accuracy at ``k``, costs) may
    go to ``k + 1``; the best of them that is not there yet, nor claimed by a running
    promotion (``taken``), is promoted. A promotion that ``affordable(record, k + 1)``
    says the budget left cannot pay for is passed over: another of the top ``n // eta``
    (a smaller student's) or a lower rung's may still fit.

    Args:
        students: Records of the study's scored students (``rungs`` filled).
        taken: ``(student, rung)`` pairs already reached or claimed.
        eta: Reduction factor.
        top: Index of the top rung.
        objectives: The study's objectives; the costs after ``accuracy`` rank students.
        affordable: Whether a student's promotion to a rung fits the compute left;
            None: all do.
        tie_break: How students of one non-dominated rank are ordered
            (:func:`promotion_order`).
        limit: ``rungs.promotion: limit``: how the students above rung 0 are ordered
            (:class:`LimitRule`); None: MO-ASHA's order at every rung.
        screen: Whether rung 0 keeps the top ``1/eta`` like every rung; False: every
            student scored at rung 0 goes on to rung 1 (``rungs.screen``, the ablation
            without rung 0's screening).
    """
    for k in range(top - 1, -1, -1):
        at = [r for r in students if len(r.rungs) > k]
        keep = len(at) // eta if k > 0 or screen else len(at)
        if keep == 0:
            continue
        points = [(r.rungs[k], *(float(r.costs()[n] or 0.0) for n in objectives[1:]))
                  for r in at]
        ranks = nondominated_ranks(points)
        order = promotion_order(points, tie_break=tie_break)
        candidates: list[int] = []
        if limit is not None and k >= 1:
            candidates = limit.candidates(at, k, students)
            order = candidates + [i for i in order if i not in candidates]
        for position, i in enumerate(order[:keep]):
            record = at[i]
            if (len(record.rungs) == k + 1 and (record.number, k + 1) not in taken
                    and (affordable is None or affordable(record, k + 1))):
                why = ""
                if limit is not None and i in candidates:
                    gap = limit.predict(record, k, limit.exponent(students))
                    why = (f"predicted {gap * 100:.2f} pts below the teacher at rung {top}: "
                           f"{candidates.index(i) + 1} of the {len(candidates)} students "
                           "predicted within the limit, cheapest first; ")
                return Promotion(record.number, k + 1, (
                    f"rung {k}: accuracy {record.rungs[k]:.4f}, {why}"
                    f"non-dominated rank {ranks[i]}, {position + 1} of {len(at)} students "
                    + (f"(the top {keep} = 1/{eta} go up)" if keep < len(at)
                       else "(rung 0 does not screen: all go up)")))
    return None


# -- what the storage holds ------------------------------------------------------------------


def _claim_of(trial: optuna.trial.FrozenTrial | optuna.Trial) -> tuple[int, int] | None:
    claim = trial.user_attrs.get(attrs.CLAIM)
    return (int(claim[0]), int(claim[1])) if claim else None


def claimed(promotions: Sequence[optuna.trial.FrozenTrial]) -> set[tuple[int, int]]:
    """``(student, rung)`` of every promotion that finished, is running or failed with an
    error (not tried again); one whose process died is claimable again."""
    return {claim for t in promotions
            if (t.state in (TrialState.RUNNING, TrialState.COMPLETE)
                or t.user_attrs.get(attrs.GAVE_UP))
            and not t.user_attrs.get(attrs.LOST_CLAIM)
            and (claim := _claim_of(t)) is not None}


def merge_promotions(records: Sequence[TrialRecord],
                     promotions: Sequence[optuna.trial.FrozenTrial]) -> list[TrialRecord]:
    """The sampler's records with each student's promotions folded in.

    A scored student's ``rungs`` are its rung-0 accuracy followed by the accuracy of
    each finished promotion, rung by rung; its ``accuracy`` is the last of them, its
    ``history`` and ``train_seconds`` add up every rung's, and its ``reason`` says why
    it went up each time.
    """
    done: dict[int, dict[int, optuna.trial.FrozenTrial]] = {}
    for t in promotions:
        claim = _claim_of(t)
        if claim is not None and t.state == TrialState.COMPLETE and t.values:
            done.setdefault(claim[0], {})[claim[1]] = t
    merged = []
    for record in records:
        if not record.trained or record.accuracy is None:
            merged.append(record)
            continue
        rungs, history = [record.accuracy], list(record.history)
        seconds = record.train_seconds or 0.0
        reasons = []
        mine = done.get(record.number, {})
        while len(rungs) in mine:
            t = mine[len(rungs)]
            reasons.append(f"to rung {len(rungs)}: {t.user_attrs.get(attrs.REASON)}")
            rungs.append(float(t.values[0]))
            history += t.user_attrs.get(attrs.HISTORY) or []
            seconds += float(t.user_attrs.get(attrs.TRAIN_SECONDS) or 0.0)
        merged.append(dataclasses.replace(record, rungs=tuple(rungs), accuracy=rungs[-1],
                                          history=tuple(history),
                                          train_seconds=round(seconds, 3),
                                          reason="; ".join(reasons) or record.reason))
    return merged


# -- checkpoints -----------------------------------------------------------------------------


def checkpoint_path(folder: Path, student: int, rung: int) -> Path:
    """Where student ``student``'s weights and optimiser state at ``rung`` are kept."""
    return folder / f"{student}-{rung}.pt"


def save_checkpoint(path: Path, student: nn.Module,
                    optimizer_state: Mapping[str, Any] | None) -> None:
    """Write the student's weights and optimiser state (atomically: a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    torch.save({"student": {k: v.detach().cpu() for k, v in student.state_dict().items()},
                "optimizer": optimizer_state}, partial)
    os.replace(partial, path)


def load_checkpoint(path: Path, space: SearchSpace, arch: Architecture,
                    ) -> tuple[nn.Module, dict[str, Any] | None]:
    """The student of ``arch`` with the weights saved at ``path``, and the optimiser state.

    Raises:
        FileNotFoundError: If no checkpoint is there (a worker with another run folder).
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint {path}: the workers of a method: rungs study must share its run "
            "folder (rungs/ holds every student's weights), e.g. on a shared file system")
    state = torch.load(path, map_location="cpu", weights_only=True)
    student = space.materialize(arch)
    student.load_state_dict(state["student"])
    return student, state["optimizer"]


# -- the uniform ladder ----------------------------------------------------------------------


def uniform_ladder(space: SearchSpace) -> list[Architecture]:
    """The students uniform pruning gives: every width choice at the same multiplier (its
    largest option not above it), from the largest below the teacher's widths down to the
    narrowest, depth and rank as the teacher's; then the space's floor
    (``space.smallest()``: fewest blocks, lowest ranks too, where the level has them).
    Distinct, largest first; empty without widths.

    The teacher's own architecture is left out: it compresses nothing, and as the most
    accurate student it would be promoted to the top rung in every study (measured on
    Fashion-MNIST: a third of the budget, and picked at 1.0x when nothing smaller met the
    limit)."""
    widths = [name for name in space.choices if name.startswith("width.")]
    if not widths:
        return []
    multipliers = sorted({float(o) for n in widths for o in space.choices[n]}, reverse=True)
    teacher = space.repair(space.largest())
    ladder: list[Architecture] = []
    for m in multipliers:
        arch = dict(space.largest())
        for name in widths:
            options = [o for o in space.choices[name] if float(o) <= m + 1e-9]
            arch[name] = max(options) if options else min(space.choices[name])
        arch = space.repair(arch)
        if arch != teacher and arch not in ladder:
            ladder.append(arch)
    floor = space.smallest()  # with depth and rank choices, below the narrowest student
    if floor != teacher and floor not in ladder:
        ladder.append(floor)
    return ladder


def enqueue_ladder(study: optuna.Study, space: SearchSpace) -> int:
    """Enqueue :func:`uniform_ladder` as the study's first trials (as option indices, the
    sampler's parameters); returns how many."""
    ladder = uniform_ladder(space)
    for arch in ladder:
        study.enqueue_trial({name: list(options).index(arch[name])
                             for name, options in space.choices.items()})
    return len(ladder)


# -- one promotion ---------------------------------------------------------------------------


def _claim(study: optuna.Study, student: int, rung: int) -> optuna.Trial | None:
    """Create a promotion trial claiming ``(student, rung)``; None (the trial failed as a
    lost claim) when an earlier running or finished trial claims the same.

    The claim is written in one call right after the trial exists, and an earlier trial
    that has not written its claim yet is waited for (up to :data:`_CLAIM_WAIT_S`): of
    two workers claiming the same promotion, the later trial always sees the earlier one.
    """
    trial = study.ask()
    trial.set_user_attr(attrs.CLAIM, [student, rung])
    trial.set_user_attr(attrs.WORKER, worker_id())
    deadline = time.monotonic() + _CLAIM_WAIT_S
    while True:
        earlier = [t for t in study.get_trials(deepcopy=False,
                                               states=(TrialState.RUNNING, TrialState.COMPLETE))
                   if t.number < trial.number and not t.user_attrs.get(attrs.LOST_CLAIM)]
        if any(_claim_of(t) == (student, rung) for t in earlier):
            trial.set_user_attr(attrs.LOST_CLAIM, True)
            trial.set_user_attr(attrs.OUTCOME, Outcome.FAILED.value)
            study.tell(trial, state=TrialState.FAIL)
            return None
        unnamed = [t for t in earlier if _claim_of(t) is None]
        if not unnamed or time.monotonic() > deadline:
            return trial
        time.sleep(0.05)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PromotionResult:
    """What training a student on to a rung made (JSON-able: a Ray trial sends it back).

    Attributes:
        val_accuracy: Validation accuracy at the new rung; None when it failed.
        history: Validation accuracy after each epoch of this rung.
        train_seconds: Wall time of the training.
        failure: Why it failed (one line), else None.
    """

    val_accuracy: float | None = None
    history: tuple[float, ...] = ()
    train_seconds: float = 0.0
    failure: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "history": list(self.history)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromotionResult:
        return cls(**{**data, "history": tuple(data.get("history") or ())})


def claim_promotion(study: optuna.Study, student: int, rung: int,
                    reason: str) -> optuna.Trial | None:
    """A promotion trial of ``study`` (the promotions' study) that holds the claim to
    ``(student, rung)`` with ``reason`` on it, or None when another worker claimed the
    same first (see :func:`_claim`)."""
    trial = _claim(study, student, rung)
    if trial is None:
        logger.info("promotion of trial %d to rung %d was claimed by another worker",
                    student, rung)
        return None
    trial.set_user_attr(attrs.REASON, reason)
    return trial


def train_promotion(evaluator: StudentEvaluator, record: TrialRecord, *, rung: int,
                    checkpoints: Path,
                    on_epoch: Callable[[int, float], None] | None = None) -> PromotionResult:
    """Train student ``record`` on from its checkpoint at rung ``rung - 1`` (weights and
    AdamW state) for ``ladder[rung] - ladder[rung - 1]`` epochs with a new one-cycle
    schedule (a warm restart), and save it at ``rung``. An error is a failed result with
    its one-line reason, never an exception. Runs wherever the trial runs (in-process, a
    worker, a Ray node: ``checkpoints`` must be the run folder's, shared)."""
    from protege.search._trial import device_of, failure_reason

    ladder = evaluator.config.ladder
    try:
        student, state = load_checkpoint(checkpoint_path(checkpoints, record.number, rung - 1),
                                         evaluator.space, record.arch)
        student = student.to(device_of(evaluator.accelerator))
        result = evaluator.train(student, record.number + 7919 * rung,
                                 on_epoch or (lambda epoch, accuracy: None),
                                 epochs=ladder[rung] - ladder[rung - 1], optimizer_state=state)
        save_checkpoint(checkpoint_path(checkpoints, record.number, rung), student,
                        result.optimizer_state)
    except Exception as exc:
        failure = failure_reason(exc)
        logger.warning("promotion of trial %d to rung %d failed: %s", record.number, rung,
                       failure)
        logger.debug("promotion failed", exc_info=True)
        return PromotionResult(failure=failure)
    return PromotionResult(val_accuracy=result.val_accuracy, history=tuple(result.history),
                           train_seconds=round(result.seconds, 3))


def tell_promotion(study: optuna.Study, trial: optuna.Trial, result: PromotionResult, *,
                   evaluator: StudentEvaluator) -> Outcome:
    """Store ``result`` on the promotion ``trial`` (history, seconds, outcome, provenance)
    and tell ``study``: ``trained``, or ``failed`` (its reason on the trial; the student
    is not promoted there again)."""
    claim = _claim_of(trial)
    assert claim is not None, "a promotion trial holds its claim (claim_promotion)"
    student, rung = claim
    if result.failure is not None or result.val_accuracy is None:
        reason = trial.user_attrs.get(attrs.REASON)
        trial.set_user_attr(attrs.REASON, f"{reason}; failed: {result.failure}")
        trial.set_user_attr(attrs.OUTCOME, Outcome.FAILED.value)
        trial.set_user_attr(attrs.GAVE_UP, True)
        study.tell(trial, state=TrialState.FAIL)
        return Outcome.FAILED
    trial.set_user_attr(attrs.HISTORY, list(result.history))
    trial.set_user_attr(attrs.TRAIN_SECONDS, result.train_seconds)
    trial.set_user_attr(attrs.OUTCOME, Outcome.TRAINED.value)
    trial.set_user_attr(attrs.PROVENANCE, evaluator.provenance)
    study.tell(trial, [result.val_accuracy])
    logger.info("trial %d promoted to rung %d (%d epochs in all): accuracy %.4f",
                student, rung, evaluator.config.ladder[rung], result.val_accuracy)
    return Outcome.TRAINED


def run_promotion(study: optuna.Study, evaluator: StudentEvaluator, record: TrialRecord, *,
                  rung: int, checkpoints: Path, reason: str) -> Outcome | None:
    """Train student ``record`` on from rung ``rung - 1`` to ``rung`` as a trial of the
    promotions study ``study`` (:func:`claim_promotion`, :func:`train_promotion`,
    :func:`tell_promotion` in this process): ``trained``, ``failed`` (an error, recorded
    on the trial with its reason; not tried again), or None when another worker claimed
    it first. ``reason`` (why it goes up) is kept on the trial.
    """
    trial = claim_promotion(study, record.number, rung, reason)
    if trial is None:
        return None
    history: list[float] = []

    def on_epoch(epoch: int, accuracy: float) -> None:
        history.append(accuracy)
        trial.set_user_attr(attrs.HISTORY, list(history))

    result = train_promotion(evaluator, record, rung=rung, checkpoints=checkpoints,
                             on_epoch=on_epoch)
    return tell_promotion(study, trial, result, evaluator=evaluator)
