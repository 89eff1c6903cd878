"""The teacher's outputs on the training data, computed once per study and kept on disk.

Every trial of a study trains against the same soft targets, so the teacher runs
once: its logits (and, when hints are on, the features of the hint layers) are
stored next to the study, keyed by a hash of the teacher's weights and the
training data, and reloaded by every later trial or worker. A changed teacher or
dataset gives a new key, so a stale cache is never used.

Hint features are cached at full resolution when they fit in ``hint_cache_mb``;
otherwise every spatial dimension is average-pooled to 4 (then 1) positions, and
the student's features are pooled alike during training. A run that wants
full-resolution hints of a large dataset uses ``distill.teacher_mode: online``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
)

from protege.common import atomic_write, describe, describe_value, eval_mode
from protege.distill._config import DistillConfig
from protege.distill._hints import capture, pool_features, select_hint_layers

__all__ = ["TeacherOutputs", "as_tensors", "cache_teacher_outputs", "fingerprint"]

logger = logging.getLogger(__name__)
progress_logger = logging.getLogger("protege.progress")
PROGRESS_EVERY_S = 10.0
"""Seconds between progress lines of the teacher's pass (the last line always shows)."""


@dataclasses.dataclass(frozen=True)
class TeacherOutputs:
    """Training inputs, labels and the teacher's logits, aligned row by row.

    Attributes:
        inputs: Training inputs.
        targets: Training labels.
        logits: The teacher's logits on ``inputs``.
        key: Hash of the teacher's weights and the data.
        hints: The teacher's hint-layer features by layer name (empty without hints),
            possibly pooled (see ``hint_pool``).
        hint_pool: Spatial size every hint feature was pooled to at most; None
            when they are at full resolution.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    key: str
    hints: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict, repr=False)
    hint_pool: int | None = None

    def subset(self, samples: int, *, seed: int = 0) -> TeacherOutputs:
        """The same outputs restricted to ``samples`` rows drawn without replacement
        by a generator seeded with ``seed`` (the same rows every call); all rows when
        there are no more than ``samples``."""
        if samples >= len(self.targets):
            return self
        rows = torch.randperm(len(self.targets),
                              generator=torch.Generator().manual_seed(seed))[:samples]
        rows = rows.sort().values
        return TeacherOutputs(self.inputs[rows], self.targets[rows], self.logits[rows],
                              f"{self.key}-rows{samples}s{seed}",
                              {name: value[rows] for name, value in self.hints.items()},
                              self.hint_pool)

    def dataset(self, *, with_hints: bool = False) -> TensorDataset:
        """``(x, y, teacher_logits, *hint features)`` rows for distillation."""
        extra = tuple(self.hints.values()) if with_hints else ()
        return TensorDataset(self.inputs, self.targets, self.logits, *extra)


def as_tensors(data: Dataset | DataLoader, *, what: str = "dataset") -> tuple[torch.Tensor, ...]:
    """All ``(inputs, targets)`` of a dataset or loader, stacked into two tensors.

    A loader that shuffles (``shuffle=True``, a ``SubsetRandomSampler``) is read in the
    dataset's order, so the same data always gives the same tensors, and with them the
    same teacher-cache key on every call and every resume. Items after the second of
    each batch are ignored.

    Inputs keep their dtype (token ids stay integers for an ``nn.Embedding``), except
    that floating-point inputs become float32, the dtype of a teacher's weights;
    targets become int64 class indices (float labels only when they are whole numbers).

    Raises:
        ValueError: If it is empty, does not yield (input, label) pairs (saying what it
            yields instead), or has float labels that are not whole numbers.
    """
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        inputs, targets = data.tensors[0], data.tensors[1]
    else:
        loader = _in_order(data) if isinstance(data, DataLoader) else DataLoader(data,
                                                                                batch_size=512)
        xs, ys = [], []
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"the {what} yields {describe_value(batch)}, not (input, "
                                 "label) pairs")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        if not xs:
            raise ValueError(f"the {what} is empty")
        inputs, targets = torch.cat(xs), torch.cat(ys)
    if len(inputs) == 0:
        raise ValueError(f"the {what} is empty")
    if targets.is_floating_point() and not bool((targets == targets.round()).all()):
        raise ValueError(f"the {what} has float labels that are not whole numbers (e.g. "
                         f"{float(targets[targets != targets.round()][0]):g}); labels must be "
                         "class indices 0..C-1")
    # integer inputs (token ids for an embedding) stay integers; floating ones become float32
    return (inputs.float() if inputs.is_floating_point() else inputs), targets.long()


def _in_order(loader: DataLoader) -> DataLoader:
    """``loader``, or the same samples in the dataset's order if its sampler shuffles."""
    sampler = loader.sampler
    if isinstance(sampler, SubsetRandomSampler):
        order: list[int] | None = sorted(int(i) for i in sampler.indices)
    elif isinstance(sampler, RandomSampler):
        order = None  # every sample (a shuffling loader may also drop its last batch)
    else:
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=order,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers)


def fingerprint(model: nn.Module, *tensors: torch.Tensor) -> str:
    """A hash of a model's weights and buffers and of some tensors."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


@torch.no_grad()
def _teacher_pass(teacher: nn.Module, inputs: torch.Tensor, batch_size: int,
                  layers: tuple[str, ...], pool: int | None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The teacher's logits on ``inputs`` and the (pooled) features of ``layers``."""
    device = next(teacher.parameters(), torch.empty(0)).device
    logits: list[torch.Tensor] = []
    features: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    start = last = time.perf_counter()
    with eval_mode(teacher), capture(teacher, layers) as store:
        for i in range(0, len(inputs), batch_size):
            logits.append(teacher(inputs[i:i + batch_size].to(device)).float().cpu())
            for name in layers:
                features[name].append(pool_features(store[name], pool).float().cpu())
            done, now = min(i + batch_size, len(inputs)), time.perf_counter()
            if now - last >= PROGRESS_EVERY_S or done == len(inputs):
                last = now
                progress_logger.info(
                    "caching the teacher's outputs: %d/%d samples, %.0f s, ETA %.0f s", done,
                    len(inputs), now - start, (now - start) / done * (len(inputs) - done))
    return torch.cat(logits), {name: torch.cat(parts) for name, parts in features.items()}


def _hint_plan(teacher: nn.Module, inputs: torch.Tensor, *, max_layers: int,
               budget_mb: float) -> tuple[tuple[str, ...], int | None]:
    """Hint layers, and the pooling that makes their features fit in ``budget_mb``."""
    example = inputs[:2].to(next(teacher.parameters(), torch.empty(0)).device)
    layers = select_hint_layers(teacher, example, max_layers=max_layers)
    with torch.no_grad(), eval_mode(teacher), capture(teacher, layers) as store:
        teacher(example)
    for pool in (None, 4, 1):
        per_sample = sum(pool_features(store[name][:1], pool).numel() for name in layers)
        if per_sample * 4 * len(inputs) <= budget_mb * 2**20:
            if pool is not None:
                logger.info("full hint features exceed %.0f MB; caching them pooled to %d",
                            budget_mb, pool)
            return layers, pool
    return layers, 1


def cache_teacher_outputs(
    teacher: nn.Module,
    data: Dataset | DataLoader,
    *,
    cache_dir: str | Path,
    batch_size: int = 512,
    config: DistillConfig | None = None,
    hint_cache_mb: float = 1024.0,
) -> TeacherOutputs:
    """Load the teacher's outputs on ``data`` from ``cache_dir``, or compute and store them.

    The file is written atomically, so concurrent workers never read half a file.

    Args:
        teacher: The trained teacher (run in eval mode, restored afterwards).
        data: Training data: a dataset or loader of ``(input, label)`` pairs.
        cache_dir: Folder of the cache files (the run folder's ``cache/``).
        batch_size: Batch size of the teacher's pass.
        config: When it asks for hints with a cached teacher, the hint layers'
            features are cached too (pooled when they exceed ``hint_cache_mb``).
        hint_cache_mb: Memory allowed for cached hint features.
    """
    inputs, targets = as_tensors(data, what="training data")
    key = fingerprint(teacher, inputs, targets)
    with_hints = config is not None and config.uses_hints and config.teacher_mode == "cached"
    suffix = ""
    if config is not None and with_hints:
        # The hint plan is a function of the teacher, the data and these two settings.
        suffix = f"-hints{config.hint_layers}-{hint_cache_mb:g}mb"
    path = Path(cache_dir) / f"teacher_outputs-{key}{suffix}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=True)
            logits = saved["logits"]
            if not isinstance(logits, torch.Tensor) or len(logits) != len(targets):
                raise ValueError(f"logits for {len(logits)} samples, not {len(targets)}")
        except Exception as exc:  # a damaged file (disk full, killed copy): compute it again
            logger.warning("teacher cache %s is unreadable (%s); computing it again",
                           path, describe(exc))
        else:
            logger.info("teacher outputs loaded from %s", path)
            return TeacherOutputs(inputs, targets, logits, key, dict(saved["hints"]),
                                  saved.get("hint_pool"))
    layers: tuple[str, ...] = ()
    pool: int | None = None
    if config is not None and with_hints:
        layers, pool = _hint_plan(teacher, inputs, max_layers=config.hint_layers,
                                  budget_mb=hint_cache_mb)
    logits, hints = _teacher_pass(teacher, inputs, batch_size, layers, pool)
    if logits.dim() != 2 or len(logits) != len(targets):
        raise ValueError(f"the teacher must return logits of shape (batch, classes); "
                         f"got {tuple(logits.shape)} for {len(targets)} samples")
    if int(targets.max()) >= logits.shape[1] or int(targets.min()) < 0:
        raise ValueError(f"labels range over [{int(targets.min())}, {int(targets.max())}] but the "
                         f"teacher has {logits.shape[1]} outputs")
    with atomic_write(path, binary=True) as handle:
        torch.save({"logits": logits, "hints": hints, "hint_pool": pool}, handle)
    logger.info("teacher outputs on %d samples cached in %s", len(logits), path)
    return TeacherOutputs(inputs, targets, logits, key, hints, pool)
