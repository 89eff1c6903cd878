"""Brief distillation of one student, and evaluation."""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from protege._modes import eval_mode
from protege.distill._cache import TeacherOutputs
from protege.distill._config import DistillConfig
from protege.distill._module import DistillModule, EpochReport

__all__ = ["TrainResult", "evaluate", "train_student"]

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a distillation run gives back.

    Attributes:
        val_accuracy: Validation accuracy after the last epoch.
        history: Validation accuracy after each epoch.
        seconds: Wall time of the training, validation included.
    """

    val_accuracy: float
    history: tuple[float, ...]
    seconds: float


def _batches(dataset: TensorDataset, batch_size: int, *, shuffle: bool, seed: int) -> DataLoader:
    """A loader that gathers whole batches by tensor indexing (no per-sample collation)."""
    if shuffle:
        sampler: RandomSampler | SequentialSampler = RandomSampler(
            dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False),
                      batch_size=None)


def train_student(
    student: nn.Module,
    train: TeacherOutputs,
    val: TensorDataset,
    *,
    config: DistillConfig,
    epochs: int | None = None,
    seed: int = 0,
    report: EpochReport | None = None,
    accelerator: str = "cpu",
) -> TrainResult:
    """Distil ``student`` from the cached teacher outputs for a short budget.

    Args:
        student: Trained in place.
        train: The teacher's cached outputs on the training data.
        val: ``(x, y)`` validation data, evaluated after every epoch.
        config: Loss and optimiser settings.
        epochs: Budget; ``config.epochs`` when None.
        seed: Seeds the data order and the global RNG (dropout), for repeatable trials.
        report: Called after every epoch with (epoch, validation accuracy).
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
    """
    epochs = config.epochs if epochs is None else epochs
    torch.manual_seed(seed)
    train_loader = _batches(train.dataset(), config.batch_size, shuffle=True, seed=seed)
    val_loader = _batches(val, 1024, shuffle=False, seed=seed)
    module = DistillModule(student, config=config, total_steps=epochs * len(train_loader),
                           report=report)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    student.train()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*batch_size.*could not be inferred.*")
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    seconds = time.perf_counter() - start
    student.eval()
    if not module.history:
        raise RuntimeError("training stopped before the first validation")
    return TrainResult(module.history[-1], tuple(module.history), seconds)


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` data."""
    device = next(model.parameters(), torch.empty(0)).device
    correct = 0
    with eval_mode(model):
        for x, y in _batches(data, batch_size, shuffle=False, seed=0):
            correct += int((model(x.to(device)).argmax(dim=-1).cpu() == y).sum())
    return correct / max(1, len(data))
