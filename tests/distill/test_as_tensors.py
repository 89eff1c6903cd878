"""``as_tensors``: the same data gives the same tensors, and a wrong shape of data is named."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler, TensorDataset

from protege.distill import as_tensors, cache_teacher_outputs


def _numbered(n: int = 64) -> TensorDataset:
    """Inputs that say their own index, so an order can be read off them."""
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % 3)


def test_a_shuffling_loader_is_read_in_the_datasets_order():
    data = _numbered()
    torch.manual_seed(0)
    loader = DataLoader(data, batch_size=8, shuffle=True, drop_last=True)
    first, second = as_tensors(loader), as_tensors(loader)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(first[0], data.tensors[0]) and torch.equal(first[1], data.tensors[1])


def test_a_subset_random_sampler_reads_its_subset_in_order():
    torch.manual_seed(0)
    subset = [40, 3, 17, 9, 60, 1, 33, 25]
    loader = DataLoader(_numbered(), batch_size=3, sampler=SubsetRandomSampler(subset))
    inputs, _ = as_tensors(loader)
    assert inputs.squeeze(1).tolist() == sorted(subset)


def test_the_teacher_cache_key_of_a_shuffling_loader_stays_the_same(tmp_path):
    torch.manual_seed(0)
    teacher = nn.Linear(1, 3).eval()
    loader = DataLoader(_numbered(), batch_size=8, shuffle=True)
    keys = {cache_teacher_outputs(teacher, loader, cache_dir=tmp_path).key for _ in range(3)}
    assert len(keys) == 1
    assert len(list(tmp_path.glob("teacher_outputs-*.pt"))) == 1


class _Dicts(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": torch.zeros(2), "label": torch.tensor(0)}


def test_data_that_is_no_pairs_is_named_by_what_it_yields():
    with pytest.raises(ValueError, match=r"the training data yields a dict with keys image, "
                                         r"label, not \(input, label\) pairs"):
        as_tensors(_Dicts(), what="training data")


def test_float_labels_are_class_indices_only_when_they_are_whole_numbers():
    x = torch.zeros(3, 2)
    _, labels = as_tensors(TensorDataset(x, torch.tensor([0.0, 2.0, 1.0])))
    assert labels.tolist() == [0, 2, 1] and labels.dtype == torch.int64
    with pytest.raises(ValueError, match=r"float labels that are not whole numbers \(e.g. 0.5\)"):
        as_tensors(TensorDataset(x, torch.tensor([0.0, 0.5, 1.0])))
