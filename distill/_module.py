"""The LightningModule that distils a student from the teacher's cached or online outputs."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import nn

from protege.common import eval_mode
from protege.distill._config import DistillConfig
from protege.distill._hints import HintAdapters, capture
from protege.distill._losses import LOSSES, ce_loss, hint_loss

__all__ = ["Augment", "DistillModule", "EpochReport"]

_Clock = Callable[[], float]

EpochReport = Callable[[int, float], None]
"""Called after each epoch with (epoch, validation accuracy); may raise to stop training."""

Augment = Callable[[torch.Tensor], torch.Tensor]
"""A random transform of a training batch of inputs (needs the teacher online)."""


def _probe(model: nn.Module, names: Sequence[str],
           example: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per-sample output shapes of the named modules on ``example``."""
    device = next(model.parameters(), torch.empty(0)).device
    with torch.no_grad(), eval_mode(model), capture(model, names) as store:
        model(example.to(device))
    return {name: tuple(store[name].shape[1:]) for name in names}


class DistillModule(pl.LightningModule):
    """Trains ``student`` against the teacher with the configured loss and hints.

    Training batches are ``(x, y, teacher_logits, *teacher_hint_features)`` from the
    cache, or ``(x, y)`` when ``teacher`` is given: then the teacher runs on every
    batch (after ``augment``, if any) in eval mode, without gradients. Validation
    batches are ``(x, y)``; validation accuracy of every epoch is logged as
    ``val_accuracy`` and kept in :attr:`history`. Loss terms are summed on the
    device and logged once per epoch as ``train/<term>`` (no per-step sync).

    Training stops after ``total_steps`` optimiser steps, or at the first step
    past ``config.max_seconds`` (counted from the start of training); Lightning
    then validates once more, so the last accuracy is always reported.

    Args:
        student: The network being trained.
        config: Loss, weights, temperature, optimiser settings and the seconds budget.
        total_steps: Optimiser steps of the whole run: the one-cycle schedule's length
            and the step budget.
        report: Called with (epoch, validation accuracy) after every validation.
        teacher: Run online when given; it is never trained and stays in eval mode.
        hint_layers: Modules whose outputs the student matches (empty: no hints).
        hint_shapes: Per-sample shape of each cached hint target; probed on the
            online teacher when None.
        example_input: A batch both networks accept, to size the hint adapters.
        augment: Random transform of each training batch of inputs.
        optimizer_state: An earlier run's AdamW state (``TrainResult.optimizer_state``)
            to go on from: its moments are kept and the schedule starts a new cycle
            over ``total_steps`` (a warm restart, as in SGDR, Loshchilov & Hutter 2017).
    """

    def __init__(self, student: nn.Module, *, config: DistillConfig, total_steps: int,
                 report: EpochReport | None = None, teacher: nn.Module | None = None,
                 hint_layers: Sequence[str] = (),
                 hint_shapes: dict[str, tuple[int, ...]] | None = None,
                 example_input: torch.Tensor | None = None,
                 augment: Augment | None = None,
                 optimizer_state: dict[str, object] | None = None) -> None:
        super().__init__()
        self.optimizer_state = optimizer_state
        self.student = student
        # A temperature left to the student's start defaults to the inherited one here;
        # callers that know the start resolve it first (DistillConfig.for_init).
        self.config = config if config.temperature is not None else config.for_init("inherit")
        self.total_steps = max(1, total_steps)
        self.report = report
        self.augment = augment
        self.hint_layers = tuple(hint_layers)
        # A list keeps the teacher out of the module tree: Lightning must neither
        # train it, nor switch it to training mode, nor checkpoint it.
        self._teacher: list[nn.Module] = [teacher] if teacher is not None else []
        self.adapters: HintAdapters | None = None
        if self.hint_layers:
            if example_input is None:
                raise ValueError("hint layers need an example_input to size their adapters")
            if hint_shapes is None:
                if teacher is None:
                    raise ValueError("hint layers need cached hint shapes or an online teacher")
                hint_shapes = _probe(teacher, self.hint_layers, example_input)
            student_shapes = _probe(student, self.hint_layers, example_input)
            self.adapters = HintAdapters(
                student_channels={name: shape[0] for name, shape in student_shapes.items()},
                teacher_shapes=hint_shapes)
        self.history: list[float] = []
        self.train_history: list[dict[str, float]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._samples = 0
        self._correct = 0
        self._seen = 0
        self.steps = 0
        self._start: float | None = None

    def elapsed(self) -> float:
        """Seconds since training started (0 before it does)."""
        return 0.0 if self._start is None else time.perf_counter() - self._start

    def on_train_start(self) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        self.steps += 1
        limit = self.config.max_seconds
        if self.steps >= self.total_steps or (limit is not None and self.elapsed() >= limit):
            self.trainer.should_stop = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    @property
    def teacher(self) -> nn.Module | None:
        """The online teacher, or None when training from the cache."""
        return self._teacher[0] if self._teacher else None

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def _targets(self, x: torch.Tensor, batch: Sequence[torch.Tensor],
                 ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The teacher's logits and hint features for this batch (online or cached)."""
        teacher = self.teacher
        if teacher is None:
            logits = batch[2] if len(batch) > 2 else None
            return logits, dict(zip(self.hint_layers, batch[3:], strict=True))
        with torch.no_grad(), eval_mode(teacher), capture(teacher, self.hint_layers) as store:
            logits = teacher(x)
        return logits, {name: store[name] for name in self.hint_layers}

    def loss_terms(self, batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """All named loss terms of one training batch; ``loss`` is minimised."""
        x, y = batch[0], batch[1]
        if self.augment is not None:
            x = self.augment(x)
        teacher_logits, teacher_features = self._targets(x, batch)
        with capture(self.student, self.hint_layers) as store:
            logits = self.student(x)
        config = self.config
        temperature = config.temperature
        assert temperature is not None  # resolved in __init__
        if teacher_logits is None:
            terms = ce_loss(logits, y)
        else:
            terms = LOSSES[config.loss](logits, teacher_logits, y, config)
        if self.adapters is not None:
            hints = hint_loss(self.adapters(dict(store)), teacher_features)
            terms["loss"] = terms["loss"] + config.hint_weight * hints
            terms["hint_loss"] = hints.detach()
        return terms

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        terms = self.loss_terms(batch)
        self.accumulate(terms, len(batch[1]))
        return terms["loss"]

    def accumulate(self, terms: dict[str, torch.Tensor], n: int) -> None:
        """Add a batch's loss terms to the epoch sums (logged once at the epoch's end)."""
        for name, value in terms.items():
            total = value.detach() * n
            self._sums[name] = self._sums[name] + total if name in self._sums else total
        self._samples += n

    def on_train_epoch_end(self) -> None:
        means = {name: float(total) / max(1, self._samples) for name, total in self._sums.items()}
        self._sums, self._samples = {}, 0
        if not all(torch.isfinite(torch.tensor(v)) for v in means.values()):
            raise FloatingPointError(f"distillation loss is not finite in epoch "
                                     f"{self.current_epoch}: {means}")
        self.train_history.append(means)
        self.log_dict({f"train/{name}": value for name, value in means.items()})

    def on_validation_epoch_start(self) -> None:
        self._correct = 0
        self._seen = 0

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        self._correct += int((self.student(x).argmax(dim=-1) == y).sum())
        self._seen += len(y)

    def on_validation_epoch_end(self) -> None:
        accuracy = self._correct / max(1, self._seen)
        self.history.append(accuracy)
        self.log("val_accuracy", accuracy)
        if self.report is not None:
            self.report(self.current_epoch, accuracy)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        params = list(self.student.parameters())
        if self.adapters is not None:
            params += list(self.adapters.parameters())
        optimizer = torch.optim.AdamW(params, lr=self.config.lr,
                                      weight_decay=self.config.weight_decay)
        if self.optimizer_state is not None:  # go on from an earlier run's moments
            optimizer.load_state_dict(self.optimizer_state)
        limit = self.config.max_seconds
        clock = None if limit is None else (lambda: self.elapsed() / limit)
        schedule = _OneCycle(optimizer, max_lr=self.config.lr, total_steps=self.total_steps,
                             pct_start=0.2, clock=clock)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class _OneCycle(torch.optim.lr_scheduler.OneCycleLR):
    """One-cycle schedule that may run ahead of the step count: with a ``clock``
    (fraction of the time budget spent) it is at whichever of steps or time is
    further along, so a seconds budget ends with the rate annealed."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, max_lr: float, total_steps: int,
                 pct_start: float, clock: _Clock | None = None) -> None:
        self.clock = clock
        if float(pct_start * total_steps) == 1.0:
            # torch divides by pct_start * total_steps - 1 (e.g. 5 steps at 0.2): nudge it.
            pct_start *= 1.5
        super().__init__(optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=pct_start)

    def step(self, epoch: int | None = None) -> None:  # type: ignore[override]
        if self.clock is not None:
            self.last_epoch = max(self.last_epoch, int(self.clock() * self.total_steps) - 1)
        # Step ``total_steps - 1`` is the cycle's end (its lowest rate); never past it.
        self.last_epoch = min(self.last_epoch, self.total_steps - 2)
        super().step()
