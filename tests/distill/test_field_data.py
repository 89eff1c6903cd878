"""Data from the field (issue 18): a last batch of one sample, integer inputs, progress."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_nets import BatchSizes
from torch import nn
from torch.utils.data import Dataset, SequentialSampler, TensorDataset

from protege.distill import (
    DistillConfig,
    NoSingleBatches,
    as_tensors,
    batch_starts,
    cache_teacher_outputs,
    evaluate,
    train_student,
)


def _bn_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def _table(n: int, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long())


# --- kind 5: never a one-sample batch in training mode -----------------------------------


@pytest.mark.parametrize("teacher_mode", ["cached", "online"])
def test_a_last_batch_of_one_sample_is_merged_into_the_previous(tmp_path, teacher_mode):
    teacher = _bn_mlp(1).eval()
    train = cache_teacher_outputs(teacher, _table(257), cache_dir=tmp_path)
    student = BatchSizes(_bn_mlp())
    config = DistillConfig(epochs=2, batch_size=64, teacher_mode=teacher_mode)
    result = train_student(student, train, _table(40, seed=1), config=config, teacher=teacher)
    assert 1 not in student.sizes and sum(student.sizes) == 2 * 257
    assert len(result.history) == 2


def test_a_trial_subset_leaving_one_sample_trains(tmp_path):
    train = cache_teacher_outputs(_bn_mlp(1).eval(), _table(300), cache_dir=tmp_path)
    student = BatchSizes(_bn_mlp())
    train_student(student, train, _table(40, seed=1),
                  config=DistillConfig(epochs=1, batch_size=64, samples=129))
    assert student.sizes == [64, 65]


def test_the_fine_tune_never_feeds_one_sample(tmp_path):
    train = cache_teacher_outputs(_bn_mlp(1).eval(), _table(193), cache_dir=tmp_path)
    student = BatchSizes(_bn_mlp())
    config = DistillConfig(epochs=1, finetune_epochs=2, batch_size=64, samples=50).for_finetune()
    train_student(student, train, _table(40, seed=1), config=config)
    assert 1 not in student.sizes and sum(student.sizes) == 2 * 193


@pytest.mark.parametrize("samples, batch_size, drop_last, sizes", [
    (257, 64, False, [64, 64, 64, 65]),
    (5, 1, False, [1, 1, 1, 2]),  # batches of one asked for: only the last two join
    (5, 2, True, [2, 2]),
    (1, 4, False, [1]),
])
def test_no_single_batches_are_those_of_batch_starts_and_their_length(samples, batch_size,
                                                                      drop_last, sizes):
    batches = list(NoSingleBatches(SequentialSampler(range(samples)), batch_size,
                                   drop_last=drop_last))
    assert [len(batch) for batch in batches] == sizes
    assert sum(batches, []) == list(range(sum(sizes)))
    assert len(NoSingleBatches(SequentialSampler(range(samples)), batch_size,
                               drop_last=drop_last)) == len(sizes)
    if not drop_last:
        assert [len(rows) for rows in batch_starts(samples, batch_size)] == sizes


# --- kind 6: integer inputs stay integer ----------------------------------------------------


class _TokenClassifier(nn.Module):
    """An ``nn.Embedding`` over token ids, mean-pooled into a linear head."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(20, 8)
        self.hidden = nn.Linear(8, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(self.embed(ids).mean(1))))


def _tokens(n: int, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 20, (n, 7), generator=generator)
    return TensorDataset(ids, ids[:, 0] % 3)


class _Pairs(Dataset):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[i]


@pytest.mark.parametrize("wrap", [lambda d: d, _Pairs])
def test_as_tensors_keeps_integer_inputs_integer(wrap):
    inputs, targets = as_tensors(wrap(_tokens(10)))
    assert inputs.dtype == torch.int64 and targets.dtype == torch.int64


def test_float64_inputs_still_become_float32():
    inputs, _ = as_tensors(TensorDataset(torch.randn(4, 3, dtype=torch.float64),
                                         torch.zeros(4, dtype=torch.long)))
    assert inputs.dtype == torch.float32


def test_a_token_classifier_is_cached_trained_and_evaluated(tmp_path):
    teacher = _TokenClassifier(1).eval()
    train = cache_teacher_outputs(teacher, _Pairs(_tokens(100)), cache_dir=tmp_path)
    assert train.inputs.dtype == torch.int64
    student = _TokenClassifier()
    result = train_student(student, train, _tokens(30, seed=1),
                           config=DistillConfig(epochs=1, batch_size=32))
    assert 0.0 <= result.val_accuracy <= 1.0
    assert 0.0 <= evaluate(student, _tokens(30, seed=2)) <= 1.0


# --- kind 8: long steps show progress at the progress logger --------------------------------


def test_caching_the_teacher_logs_progress(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="protege.progress"):
        cache_teacher_outputs(_bn_mlp(1).eval(), _table(100), cache_dir=tmp_path, batch_size=32)
    lines = [r.getMessage() for r in caplog.records if r.name == "protege.progress"]
    assert lines and "100/100 samples" in lines[-1]


def test_a_fine_tune_logs_one_line_per_epoch(tmp_path, caplog):
    train = cache_teacher_outputs(_bn_mlp(1).eval(), _table(100), cache_dir=tmp_path)
    with caplog.at_level(logging.INFO, logger="protege.progress"):
        train_student(_bn_mlp(), train, _table(20, seed=1),
                      config=DistillConfig(epochs=3, batch_size=50), progress="fine-tune")
    lines = [r.getMessage() for r in caplog.records if r.name == "protege.progress"]
    assert [line.split(",")[0] for line in lines] == [
        "fine-tune: epoch 1/3", "fine-tune: epoch 2/3", "fine-tune: epoch 3/3"]
    assert all("val accuracy" in line and "ETA" in line for line in lines)
