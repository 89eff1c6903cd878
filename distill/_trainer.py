"""Brief distillation of one student, and evaluation."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

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

from protege.common import eval_mode
from protege.distill._cache import TeacherOutputs
from protege.distill._config import DistillConfig
from protege.distill._hints import select_hint_layers
from protege.distill._module import Augment, DistillModule, EpochReport

__all__ = ["NoSingleBatches", "TrainResult", "batch_starts", "evaluate", "train_student"]

logger = logging.getLogger(__name__)
progress_logger = logging.getLogger("protege.progress")
"""Progress of long steps (a line per fine-tune epoch), apart from the library's
diagnostics so a front end can show it at its default verbosity."""

_LIGHTNING_INFO = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                   # "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]" on every fit on a GPU
                   "pytorch_lightning.accelerators.cuda", "lightning.pytorch.accelerators.cuda")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Hold back Lightning's per-fit banners (devices, tips, "fit stopped", the CUDA device
    line) and the warnings every in-memory fit raises (few loader workers, a batch size it
    cannot infer from tensor batches, a deprecation inside Lightning): a search runs
    hundreds of fits. Other warnings still show."""
    loggers = [logging.getLogger(name) for name in _LIGHTNING_INFO]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*batch_size.*could not be inferred.*")
            warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a distillation run gives back.

    Attributes:
        val_accuracy: Validation accuracy after the last epoch.
        history: Validation accuracy after each epoch.
        seconds: Wall time of the training, validation included.
        steps: Optimiser steps taken.
        samples: Training samples the student was trained on.
        optimizer_state: The optimiser's state at the end (``state_dict``, on the CPU),
            to go on training later (``train_student(optimizer_state=...)``).
    """

    val_accuracy: float
    history: tuple[float, ...]
    seconds: float
    steps: int = 0
    samples: int = 0
    optimizer_state: dict[str, Any] | None = dataclasses.field(default=None, repr=False,
                                                               compare=False)


def batch_starts(samples: int, batch_size: int) -> Sequence[range]:
    """Index ranges of consecutive batches, none of one sample unless ``samples`` is 1."""
    ranges = [range(i, min(i + batch_size, samples)) for i in range(0, samples, batch_size)]
    if len(ranges) > 1 and len(ranges[-1]) == 1:
        ranges[-2:] = [range(ranges[-2].start, samples)]
    return ranges


class NoSingleBatches(BatchSampler):
    """Batches of ``batch_size`` where a last batch of one sample joins the one before.

    A network with batch statistics (BatchNorm after a linear layer) cannot train on
    one sample ("Expected more than 1 value per channel"), and a data set of 257
    samples in batches of 64 leaves exactly one. The batches are those of
    :func:`batch_starts` over the sampler's order (with ``drop_last``, the plain
    batches: none is short).
    """

    def __iter__(self) -> Iterator[list[int]]:
        if self.drop_last:
            yield from super().__iter__()
            return
        order = list(self.sampler)
        for rows in batch_starts(len(order), self.batch_size):
            yield order[rows.start:rows.stop]

    def __len__(self) -> int:
        if self.drop_last:
            return super().__len__()
        return len(batch_starts(len(self.sampler), self.batch_size))  # type: ignore[arg-type]


def batch_loader(dataset: TensorDataset, batch_size: int, *, shuffle: bool,
                 seed: int) -> DataLoader:
    """A loader that gathers whole batches by tensor indexing (no per-sample collation).

    Training batches (``shuffle``) never hold a single sample: see
    :class:`NoSingleBatches`.
    """
    if shuffle:
        sampler: RandomSampler | SequentialSampler = RandomSampler(
            dataset, generator=torch.Generator().manual_seed(seed))
        batches: BatchSampler = NoSingleBatches(sampler, batch_size, drop_last=False)
    else:
        sampler = SequentialSampler(dataset)
        batches = BatchSampler(sampler, batch_size, drop_last=False)
    return DataLoader(dataset, sampler=batches, batch_size=None)


def _epoch_lines(label: str, epochs: int, report: EpochReport | None) -> EpochReport:
    """``report`` that also logs one progress line per epoch, with an ETA."""
    start = time.perf_counter()

    def line(epoch: int, accuracy: float) -> None:
        elapsed = time.perf_counter() - start
        left = elapsed / (epoch + 1) * max(0, epochs - epoch - 1)
        progress_logger.info("%s: epoch %d/%d, val accuracy %.4f, %.0f s, ETA %.0f s",
                             label, epoch + 1, epochs, accuracy, elapsed, left)
        if report is not None:
            report(epoch, accuracy)

    return line


def _plan(student: nn.Module, train: TeacherOutputs, *, config: DistillConfig,
          teacher: nn.Module | None, augment: Augment | None,
          ) -> tuple[nn.Module | None, tuple[str, ...]]:
    """Whether the teacher runs online (it is returned then) and which hint layers to use."""
    needs_teacher = config.loss != "ce" or config.uses_hints
    online = needs_teacher and (config.teacher_mode == "online" or augment is not None)
    if config.uses_hints and not online and not train.hints:
        if teacher is None:
            raise ValueError("distill.hint_weight > 0 with a cached teacher needs hint features "
                             "in the cache: call cache_teacher_outputs(..., config=config)")
        logger.warning("the cache holds no hint features; running the teacher online")
        online = True
    if online and teacher is None:
        why = "random augmentation" if augment is not None else "distill.teacher_mode=online"
        raise ValueError(f"{why} runs the teacher on every batch: pass train_student(teacher=...)")
    if not config.uses_hints:
        layers: tuple[str, ...] = ()
    elif online:
        assert teacher is not None
        example = train.inputs[:2].to(next(teacher.parameters(), torch.empty(0)).device)
        layers = select_hint_layers(teacher, example, max_layers=config.hint_layers)
    else:
        layers = tuple(train.hints)
    present = set(dict(student.named_modules()))
    missing = [name for name in layers if name not in present]
    if missing:
        logger.warning("hint layers %s are not in the student; matching the others", missing)
        layers = tuple(name for name in layers if name in present)
    if config.uses_hints and not layers:
        raise ValueError("distill.hint_weight > 0 but no hint layer is shared by teacher "
                         "and student")
    return (teacher if online else None), layers


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
    teacher: nn.Module | None = None,
    augment: Augment | None = None,
    module: type[DistillModule] = DistillModule,
    progress: str | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> TrainResult:
    """Distil ``student`` from the teacher for a short budget.

    The budget is ``epochs`` (or ``config.max_steps`` steps), capped by
    ``config.max_seconds``, on ``config.samples`` training samples (a subset drawn
    with seed 0, the same for every trial); validation follows every epoch and the
    last step. Use ``config.for_finetune()`` for a run on all data without them.

    With ``distill.teacher_mode: cached`` (the default) the student trains against
    ``train``'s cached logits and hint features and ``teacher`` is not needed; with
    ``online``, or whenever ``augment`` is given (a fixed cache would be wrong for
    randomly augmented inputs), the teacher runs on every batch.

    Args:
        student: Trained in place.
        train: The training data and the teacher's cached outputs on it.
        val: ``(x, y)`` validation data, evaluated after every epoch.
        config: Loss and optimiser settings.
        epochs: Epoch budget; ``config.epochs`` when None (``config.max_steps``, when
            set, takes precedence).
        seed: Seeds the data order and the global RNG (dropout), for repeatable trials.
        report: Called after every epoch with (epoch, validation accuracy).
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        teacher: The teacher, for the online mode (or hints missing from the cache).
        augment: Random transform of each training batch of inputs.
        module: The LightningModule class that takes the steps: a subclass of
            :class:`DistillModule` changes how (e.g. the benchmark's manual optimisation).
        progress: Log a line per epoch (validation accuracy, elapsed time and ETA) to
            the ``protege.progress`` logger, starting with this label (``"fine-tune"``);
            None for none (trials: hundreds of short fits).
        optimizer_state: An earlier run's ``TrainResult.optimizer_state`` to go on from
            (the student must be that run's, with its weights): AdamW keeps its moments
            and the one-cycle schedule starts again over this run's budget, a warm
            restart. The rungs of a multi-fidelity search train this way.

    Raises:
        ValueError: If the online mode is needed but no teacher is given, or hints
            are asked for but teacher and student share no hint layer.
    """
    epochs = config.budget_epochs if epochs is None else epochs
    torch.manual_seed(seed)
    if config.samples is not None:
        train = train.subset(config.samples, seed=0)
    online, layers = _plan(student, train, config=config, teacher=teacher, augment=augment)
    if online is not None:
        dataset = TensorDataset(train.inputs, train.targets)
        shapes = None
    elif layers:
        dataset = TensorDataset(train.inputs, train.targets, train.logits,
                                *(train.hints[name] for name in layers))
        shapes = {name: tuple(train.hints[name].shape[1:]) for name in layers}
    else:
        dataset = train.dataset()
        shapes = None
    train_loader = batch_loader(dataset, config.batch_size, shuffle=True, seed=seed)
    val_loader = batch_loader(val, 1024, shuffle=False, seed=seed)
    batches = len(train_loader)
    total_steps = epochs * batches if config.max_steps is None else config.max_steps
    if progress is not None:
        report = _epoch_lines(progress, math.ceil(total_steps / batches), report)
    lightning_module = module(student, config=config, total_steps=total_steps,
                           report=report, teacher=online, hint_layers=layers, hint_shapes=shapes,
                           example_input=train.inputs[:2], augment=augment,
                           optimizer_state=optimizer_state)
    student.train()
    start = time.perf_counter()
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=math.ceil(total_steps / batches),
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        trainer.fit(lightning_module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    seconds = time.perf_counter() - start
    student.eval()
    if not lightning_module.history:
        raise RuntimeError("training stopped before the first validation")
    state = _cpu(trainer.optimizers[0].state_dict()) if trainer.optimizers else None
    return TrainResult(lightning_module.history[-1], tuple(lightning_module.history), seconds,
                       steps=lightning_module.steps, samples=len(dataset),
                       optimizer_state=state)


def _cpu(value: Any) -> Any:
    """``value`` (an optimiser's ``state_dict``) with every tensor copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {key: _cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(item) for item in value)
    return value


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` data."""
    device = next(model.parameters(), torch.empty(0)).device
    correct = 0
    with eval_mode(model):
        for x, y in batch_loader(data, batch_size, shuffle=False, seed=0):
            correct += int((model(x.to(device)).argmax(dim=-1).cpu() == y).sum())
    return correct / max(1, len(data))
