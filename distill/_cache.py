"""The teacher's outputs on the training data, computed once per study and kept on disk.

Every trial of a study trains against the same soft targets, so the teacher runs
once: its logits are stored next to the study, keyed by a hash of the teacher's
weights and the training data, and reloaded by every later trial or worker. A
changed teacher or dataset gives a new key, so a stale cache is never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from protege._modes import eval_mode

__all__ = ["TeacherOutputs", "as_tensors", "cache_teacher_outputs", "fingerprint"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TeacherOutputs:
    """Training inputs, labels and the teacher's logits, aligned row by row."""

    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    key: str

    def dataset(self) -> TensorDataset:
        """``(x, y, teacher_logits)`` triples for distillation."""
        return TensorDataset(self.inputs, self.targets, self.logits)


def as_tensors(data: Dataset | DataLoader, *, what: str = "dataset") -> tuple[torch.Tensor, ...]:
    """All ``(inputs, targets)`` of a dataset or loader, stacked into two tensors.

    Raises:
        ValueError: If it is empty or does not yield (input, label) pairs.
    """
    if isinstance(data, TensorDataset) and len(data.tensors) >= 2:
        inputs, targets = data.tensors[0], data.tensors[1]
    else:
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=512)
        xs, ys = [], []
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise ValueError(f"the {what} must yield (input, label) pairs")
            xs.append(torch.as_tensor(batch[0]))
            ys.append(torch.as_tensor(batch[1]))
        if not xs:
            raise ValueError(f"the {what} is empty")
        inputs, targets = torch.cat(xs), torch.cat(ys)
    if len(inputs) == 0:
        raise ValueError(f"the {what} is empty")
    return inputs.float(), targets.long()


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
def _teacher_logits(teacher: nn.Module, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(teacher.parameters(), torch.empty(0)).device
    with eval_mode(teacher):
        parts = [teacher(inputs[i:i + batch_size].to(device)).float().cpu()
                 for i in range(0, len(inputs), batch_size)]
    return torch.cat(parts)


def cache_teacher_outputs(
    teacher: nn.Module,
    data: Dataset | DataLoader,
    *,
    cache_dir: str | Path,
    batch_size: int = 512,
) -> TeacherOutputs:
    """Load the teacher's outputs on ``data`` from ``cache_dir``, or compute and store them.

    The file is written atomically, so concurrent workers never read half a file.
    """
    inputs, targets = as_tensors(data, what="training data")
    key = fingerprint(teacher, inputs, targets)
    path = Path(cache_dir) / f"teacher_outputs-{key}.pt"
    if path.is_file():
        logits = torch.load(path, weights_only=True)["logits"]
        logger.info("teacher outputs loaded from %s", path)
        return TeacherOutputs(inputs, targets, logits, key)
    logits = _teacher_logits(teacher, inputs, batch_size)
    if logits.dim() != 2 or len(logits) != len(targets):
        raise ValueError(f"the teacher must return logits of shape (batch, classes); "
                         f"got {tuple(logits.shape)} for {len(targets)} samples")
    if int(targets.max()) >= logits.shape[1] or int(targets.min()) < 0:
        raise ValueError(f"labels range over [{int(targets.min())}, {int(targets.max())}] but the "
                         f"teacher has {logits.shape[1]} outputs")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        torch.save({"logits": logits}, handle)
    os.replace(handle.name, path)
    logger.info("teacher outputs on %d samples cached in %s", len(logits), path)
    return TeacherOutputs(inputs, targets, logits, key)
