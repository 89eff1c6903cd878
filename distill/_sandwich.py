"""Training a weight-sharing supernet with the sandwich rule and in-place distillation.

Each optimiser step trains the largest student, the smallest and ``students`` random
ones on the same batch and sums their gradients into the shared weights (the sandwich
rule of BigNAS, Yu et al., ECCV 2020, after slimmable networks, Yu & Huang, ICCV 2019).
Every student distils from the teacher's cached logits; with ``inplace`` the smaller
ones distil from the largest student's logits of the same step instead (in-place
distillation, Yu & Huang 2019), which needs no teacher at all after the cache.

The supernet is any module called as ``supernet(x, arch)`` that names its largest and
smallest students and samples others: :class:`protege.spaces.Supernet` is one. This
module does not import ``protege.spaces``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, Protocol, cast

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import TensorDataset

from protege.distill._cache import TeacherOutputs
from protege.distill._calibrate import recalibrate_batchnorm
from protege.distill._config import DistillConfig
from protege.distill._losses import LOSSES
from protege.distill._module import _OneCycle
from protege.distill._trainer import _cpu, _quiet_lightning, batch_loader, evaluate, progress_logger

__all__ = ["SandwichModule", "SupernetResult", "WeightSharing", "calibration_rows",
           "train_supernet"]


class WeightSharing(Protocol):
    """What :func:`train_supernet` trains: students as slices of one set of weights."""

    def __call__(self, x: torch.Tensor, arch: Mapping[str, Any] | None = None) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Any: ...

    training: bool

    def train(self, mode: bool = True) -> Any: ...

    def largest(self) -> dict[str, Any]: ...

    def smallest(self) -> dict[str, Any]: ...

    def sample(self, rng: np.random.Generator) -> dict[str, Any]: ...

    def student(self, arch: Mapping[str, Any]) -> nn.Module: ...


@dataclasses.dataclass(frozen=True)
class SupernetResult:
    """What training a supernet gives back.

    Attributes:
        history: After each epoch, the validation accuracy of the largest and of the
            smallest student (``{"epoch", "largest", "smallest"}``; the smallest with its
            BatchNorm statistics recalibrated, as every student is before it is scored).
        seconds: Wall time of the training and of those validations.
        steps: Optimiser steps taken.
        samples: Training samples per epoch.
        students_per_step: Students trained on each batch (largest, smallest, random).
        sample_passes: Training sample-passes in all: every student's forward and
            backward pass over every sample counts one.
        optimizer_state: The optimiser's state at the end (on the CPU).
    """

    history: tuple[dict[str, float], ...]
    seconds: float
    steps: int
    samples: int
    students_per_step: int
    sample_passes: int
    optimizer_state: dict[str, Any] | None = dataclasses.field(default=None, repr=False,
                                                               compare=False)


def calibration_rows(samples: int, count: int) -> torch.Tensor:
    """The sorted rows of the training data that BatchNorm is recalibrated on: ``count``
    of ``samples`` drawn with seed 0, the same for every student and every run."""
    rows = torch.randperm(samples, generator=torch.Generator().manual_seed(0))[:count]
    return rows.sort().values


class SandwichModule(pl.LightningModule):
    """One sandwich step per batch of ``(x, y, teacher_logits)`` (manual optimisation:
    each student's backward pass frees its graph before the next student runs).

    Args:
        supernet: The shared weights and their students.
        config: Loss, temperature, learning rate and weight decay (AdamW, one cycle).
        total_steps: Optimiser steps of the run: the schedule's length.
        students: Random students per step, besides the largest and the smallest.
        inplace: Distil the smaller students from the largest's logits (detached)
            instead of the teacher's.
        seed: Seeds the random students.
        val: ``(x, y)`` data scored after each epoch.
        calibration: Training inputs the smallest student's BatchNorm is recalibrated on
            before it is scored.
    """

    def __init__(self, supernet: WeightSharing, *, config: DistillConfig, total_steps: int,
                 students: int, inplace: bool, seed: int, val: TensorDataset,
                 calibration: torch.Tensor) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.supernet = supernet  # a module: Lightning moves it and checkpoints it
        self.config = config if config.temperature is not None else config.for_init("inherit")
        self.total_steps = max(1, total_steps)
        self.students = students
        self.inplace = inplace
        self.rng = np.random.default_rng(seed)
        self.val = val
        self.calibration = calibration
        self.history: list[dict[str, float]] = []
        self.steps = 0
        self.seen = 0
        """Training samples of the batches stepped on so far."""
        self._largest = supernet.largest()
        self._smallest = supernet.smallest()

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        x, y, teacher_logits = batch[0], batch[1], batch[2]
        optimizer = self.optimizers()
        assert not isinstance(optimizer, list)  # configure_optimizers returns one
        optimizer.zero_grad()
        loss_fn = LOSSES[self.config.loss]
        archs = [self._largest, self._smallest,
                 *(self.supernet.sample(self.rng) for _ in range(self.students))]
        largest_logits = None
        total = torch.zeros((), device=x.device)
        for i, arch in enumerate(archs):
            logits = self.supernet(x, None if i == 0 else arch)
            target = teacher_logits if i == 0 or not self.inplace else largest_logits
            loss = loss_fn(logits, target, y, self.config)["loss"]
            self.manual_backward(loss)  # gradients of every student add up (BigNAS)
            if i == 0:
                largest_logits = logits.detach()
            total = total + loss.detach()
        optimizer.step()
        schedule = self.lr_schedulers()
        if isinstance(schedule, torch.optim.lr_scheduler.LRScheduler):
            schedule.step()
        self.steps += 1
        self.seen += len(y)
        if not torch.isfinite(total):
            raise FloatingPointError(f"supernet loss is not finite at step {self.steps}")
        if self.steps >= self.total_steps:
            self.trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        device = next(self.supernet.parameters()).device
        smallest = self.supernet.student(self._smallest).to(device)
        recalibrate_batchnorm(smallest, self.calibration)
        self.history.append({"epoch": float(len(self.history) + 1),  # the largest: itself
                             "largest": evaluate(cast(nn.Module, self.supernet), self.val),
                             "smallest": evaluate(smallest, self.val)})
        progress_logger.info("supernet: epoch %d, val accuracy largest %.4f, smallest %.4f",
                             len(self.history), self.history[-1]["largest"],
                             self.history[-1]["smallest"])

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        optimizer = torch.optim.AdamW(self.supernet.parameters(), lr=self.config.lr,
                                      weight_decay=self.config.weight_decay)
        schedule = _OneCycle(optimizer, max_lr=self.config.lr, total_steps=self.total_steps,
                             pct_start=0.2)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def train_supernet(
    supernet: WeightSharing,
    train: TeacherOutputs,
    val: TensorDataset,
    *,
    config: DistillConfig,
    epochs: int,
    students: int = 2,
    inplace: bool = False,
    seed: int = 0,
    calibration_samples: int = 512,
    accelerator: str = "cpu",
) -> SupernetResult:
    """Train ``supernet`` in place with the sandwich rule for ``epochs`` epochs.

    Every batch trains ``students + 2`` students (largest, smallest, random), each
    distilled with ``config``'s loss from the teacher's cached logits (or, with
    ``inplace``, the smaller ones from the largest's). All training samples are used
    (``config.samples`` and the trial budgets do not apply); AdamW with one cycle over
    the whole run. After each epoch the largest and the (recalibrated) smallest student
    are scored on ``val``.

    Args:
        supernet: Trained in place (e.g. :class:`protege.spaces.Supernet`).
        train: Training data and the teacher's cached logits.
        val: ``(x, y)`` validation data.
        config: Loss and optimiser settings (``batch_size``, ``lr``, ``weight_decay``,
            ``loss``, ``alpha``, ``temperature``); feature hints are not supported.
        epochs: Passes over the training data (at least 1).
        students: Random students per step besides the largest and the smallest.
        inplace: Distil the smaller students from the largest student's logits.
        seed: Seeds the data order, the random students and the global RNG (dropout).
        calibration_samples: Training samples the smallest student's BatchNorm is
            recalibrated on before each epoch's score.
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``); one device.

    Raises:
        ValueError: If ``epochs`` is below 1 or ``students`` is negative, or the config asks
            for feature hints.
        FloatingPointError: If the loss stops being finite.
    """
    if epochs < 1 or students < 0:
        raise ValueError(f"epochs must be >= 1 and students >= 0, got {epochs} and {students}")
    if config.uses_hints:
        raise ValueError("a supernet trains on logits only: set distill.hint_weight to 0")
    torch.manual_seed(seed)
    loader = batch_loader(train.dataset(), config.batch_size, shuffle=True, seed=seed)
    total_steps = epochs * len(loader)
    rows = calibration_rows(len(train.inputs), min(calibration_samples, len(train.inputs)))
    module = SandwichModule(supernet, config=config, total_steps=total_steps,
                            students=students, inplace=inplace, seed=seed, val=val,
                            calibration=train.inputs[rows])
    supernet.train()
    start = time.perf_counter()
    with _quiet_lightning():
        trainer = pl.Trainer(max_epochs=epochs, accelerator=accelerator, devices=1,
                             logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, limit_val_batches=0)
        trainer.fit(module, train_dataloaders=loader)
    seconds = time.perf_counter() - start
    supernet.train(False)
    per_step = students + 2
    state = _cpu(trainer.optimizers[0].state_dict()) if trainer.optimizers else None
    return SupernetResult(tuple(module.history), round(seconds, 3), module.steps,
                          len(train.inputs), per_step, module.seen * per_step,
                          optimizer_state=state)
