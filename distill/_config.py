"""Settings of the distillation every trial and the final fine-tune run."""

from __future__ import annotations

import dataclasses
import math

from protege.common import require as _check
from protege.distill._losses import LOSSES

__all__ = ["DEFAULT_EPOCHS", "INIT_TEMPERATURE", "TEACHER_MODES", "DistillConfig"]

DEFAULT_EPOCHS = 5
"""Epochs of training when ``epochs`` is left unset and no caller's preset fills it."""

TEACHER_MODES = ("cached", "online")
"""Where the teacher's outputs come from during training."""

INIT_TEMPERATURE = {"inherit": 2.0, "scratch": 1.0}
"""Default KD temperature by how the student starts (measured on MNIST-1D at 5 epochs)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """How each student is distilled from the teacher's cached outputs.

    Defaults are measured on MNIST-1D (``experiments/bench_distill.py``, results in
    ``experiments/results/distill.md``): a peak learning rate of 1e-2 was best or
    tied for inherited and scratch students at every budget tried; inherited
    students reach their accuracy in 3 to 5 epochs, scratch students need about 8.
    Hinton KD with ``alpha=0.5, temperature=2`` beat ``0.9, 4`` (the classic
    setting) on both; DKD's ``beta=1`` beat the paper's 8 (made for 100 classes).
    Inherited and scratch students want different temperatures: at the brief budget
    soft targets at ``T=2`` slow scratch students down (KD 1.5 points below plain
    cross-entropy), while ``T=1`` brings them level with it and costs inherited
    students 0.2-0.5 points; so ``temperature`` defaults to None, which
    :meth:`for_init` resolves to :data:`INIT_TEMPERATURE` of the student's start.

    A trial's budget is ``epochs`` passes over its training data, or ``max_steps``
    optimiser steps when that is set; ``max_seconds`` caps either (training stops
    at the first step past it, then validates once more). ``samples`` trains every
    trial on the same seeded subset of the training data. The learning rate follows
    one cycle over the budget; under a seconds budget it advances by whichever of
    steps or wall time is further along, so it has annealed when time runs out.
    The final fine-tune (:meth:`for_finetune`) drops the three trial budgets.

    Args:
        alpha: Weight of the soft-target (KD) term; ``1 - alpha`` weighs the hard labels.
        temperature: Softmax temperature of the soft targets; None: by the student's
            start (:meth:`for_init`), and 2 (the inherited students') where the start
            is not known.
        epochs: Epochs of the brief training every trial gets; None: the caller's
            preset (the search's level, ``protege.search.Config.resolve``), else
            :data:`DEFAULT_EPOCHS`.
        max_steps: Optimiser steps of a trial instead of ``epochs`` (the last epoch
            may be partial; validation still follows every epoch and the last step).
        max_seconds: Wall-clock cap of a trial's training and validation, in seconds.
        samples: Train each trial on a fixed seeded subset of this many training
            samples (all of them when there are fewer).
        finetune_epochs: Epochs of the final distillation of the pick.
        batch_size: Training batch size.
        lr: Peak learning rate of the one-cycle AdamW schedule.
        weight_decay: AdamW weight decay.
        loss: Logit loss: ``hinton`` (soft targets at ``temperature``, weight ``alpha``),
            ``dkd`` (decoupled KD: cross-entropy plus ``dkd_alpha`` x target-class and
            ``dkd_beta`` x non-target terms) or ``ce`` (labels only, no teacher).
        dkd_alpha: DKD's weight of the target-class term.
        dkd_beta: DKD's weight of the non-target-class term.
        hint_weight: Weight of the feature-hint term (0 switches hints off).
        hint_layers: How many stage outputs to match at most (the deepest are kept).
        teacher_mode: ``cached``: the teacher's outputs (and hint features) on the training
            data are computed once per study; ``online``: the teacher runs on every
            batch (needed with random augmentation, or when hint features do not fit
            in memory at full resolution and pooled hints are not wanted).
    """

    alpha: float = 0.5
    temperature: float | None = None
    epochs: int | None = None
    max_steps: int | None = None
    max_seconds: float | None = None
    samples: int | None = None
    finetune_epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-2
    weight_decay: float = 1e-4
    loss: str = "hinton"
    dkd_alpha: float = 1.0
    dkd_beta: float = 1.0
    hint_weight: float = 0.0
    hint_layers: int = 3
    teacher_mode: str = "cached"

    def __post_init__(self) -> None:
        _check(0.0 <= self.alpha <= 1.0, "distill.alpha", f"must be in [0, 1], got {self.alpha}")
        _check(self.temperature is None or self.temperature > 0, "distill.temperature",
               f"must be positive (or null: by init), got {self.temperature}")
        _check(self.epochs is None or self.epochs >= 1, "distill.epochs",
               f"must be >= 1, got {self.epochs}")
        _check(self.max_steps is None or self.max_steps >= 1, "distill.max_steps",
               f"must be >= 1 (or null for the epochs budget), got {self.max_steps}")
        _check(self.max_seconds is None or self.max_seconds > 0, "distill.max_seconds",
               f"must be positive (or null for no time limit), got {self.max_seconds}")
        _check(self.samples is None or self.samples >= 1, "distill.samples",
               f"must be >= 1 (or null for all training samples), got {self.samples}")
        _check(self.finetune_epochs >= 0, "distill.finetune_epochs",
               f"must be >= 0, got {self.finetune_epochs}")
        _check(self.batch_size >= 1, "distill.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, "distill.lr", f"must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, "distill.weight_decay",
               f"must be >= 0, got {self.weight_decay}")
        _check(self.loss in LOSSES, "distill.loss",
               f"unknown loss {self.loss!r}; known: {', '.join(LOSSES)}")
        _check(self.dkd_alpha >= 0, "distill.dkd_alpha", f"must be >= 0, got {self.dkd_alpha}")
        _check(self.dkd_beta >= 0, "distill.dkd_beta", f"must be >= 0, got {self.dkd_beta}")
        _check(self.hint_weight >= 0, "distill.hint_weight",
               f"must be >= 0, got {self.hint_weight}")
        _check(self.hint_layers >= 1, "distill.hint_layers",
               f"must be >= 1, got {self.hint_layers}")
        _check(self.teacher_mode in TEACHER_MODES, "distill.teacher_mode",
               f"must be one of {', '.join(TEACHER_MODES)}, got {self.teacher_mode!r}")

    @property
    def budget_epochs(self) -> int:
        """``epochs``, or :data:`DEFAULT_EPOCHS` where it is unset."""
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS

    @property
    def uses_hints(self) -> bool:
        """Whether trials match feature hints."""
        return self.hint_weight > 0

    def trial_samples(self, available: int) -> int:
        """Training samples a trial uses out of ``available``."""
        return available if self.samples is None else min(self.samples, available)

    def trial_epochs(self, available: int) -> int:
        """Validations a trial reports (one per epoch, the last perhaps partial) when it
        trains on ``available`` samples and no seconds budget cuts it short."""
        if self.max_steps is None:
            return self.budget_epochs
        batches = math.ceil(self.trial_samples(available) / self.batch_size)
        return math.ceil(self.max_steps / batches)

    def for_init(self, init: str) -> DistillConfig:
        """These settings for a student that starts from the teacher's weights
        (``inherit``) or from random ones (``scratch``): a temperature left at None
        becomes :data:`INIT_TEMPERATURE` of ``init``; a set one is kept."""
        if init not in INIT_TEMPERATURE:
            raise ValueError(f"init must be one of {', '.join(INIT_TEMPERATURE)}, got {init!r}")
        if self.temperature is not None:
            return self
        return dataclasses.replace(self, temperature=INIT_TEMPERATURE[init])

    def for_finetune(self) -> DistillConfig:
        """The settings of the final fine-tune: ``finetune_epochs`` (or ``epochs`` when
        0) on all the training data, without the step, seconds or samples budgets."""
        return dataclasses.replace(self, epochs=self.finetune_epochs or self.budget_epochs,
                                   max_steps=None, max_seconds=None, samples=None)
