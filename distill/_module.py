"""The LightningModule that distils a student from cached teacher outputs."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn

from protege.distill._config import DistillConfig
from protege.distill._losses import hinton_loss

__all__ = ["DistillModule", "EpochReport"]

EpochReport = Callable[[int, float], None]
"""Called after each epoch with (epoch, validation accuracy); may raise to stop training."""


class DistillModule(pl.LightningModule):
    """Trains ``student`` on ``(x, y, teacher_logits)`` batches with Hinton's loss.

    Validation batches are ``(x, y)``; validation accuracy of every epoch is logged
    as ``val_accuracy`` and kept in :attr:`history`.

    Args:
        student: The network being trained.
        config: Loss weights, temperature and optimiser settings.
        total_steps: Optimiser steps of the whole run (for the one-cycle schedule).
        report: Called with (epoch, validation accuracy) after every validation.
    """

    def __init__(self, student: nn.Module, *, config: DistillConfig, total_steps: int,
                 report: EpochReport | None = None) -> None:
        super().__init__()
        self.student = student
        self.config = config
        self.total_steps = max(1, total_steps)
        self.report = report
        self.history: list[float] = []
        self._correct = 0
        self._seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, y, teacher_logits = batch
        terms = hinton_loss(self.student(x), teacher_logits, y,
                            temperature=self.config.temperature, alpha=self.config.alpha)
        if not torch.isfinite(terms["loss"]):
            raise FloatingPointError(f"distillation loss is {terms['loss'].item()} at step "
                                     f"{self.global_step}")
        self.log_dict({f"train/{name}": value for name, value in terms.items()},
                      on_step=False, on_epoch=True, batch_size=len(x))
        return terms["loss"]

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
        optimizer = torch.optim.AdamW(self.student.parameters(), lr=self.config.lr,
                                      weight_decay=self.config.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=self.config.lr, total_steps=self.total_steps, pct_start=0.2,
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
