"""Bad input gets a clear error that names the problem, and leaves no half-written run."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tiny_nets import make_tiny_net
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import protege
from protege.search import Config, run_search

X = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
GOOD = TensorDataset(X, Y)
EMPTY = TensorDataset(torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long))


class Pairless(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return X[i]


def cfg(**extra) -> Config:
    return Config.from_dict({"task": "custom", "n_trials": 1,
                             "distill": {"epochs": 1, "finetune_epochs": 1}, **extra})


CASES = {
    "non-module teacher": (dict(teacher=lambda x: x), TypeError, "must be a torch.nn.Module"),
    "teacher outputs do not fit the labels": (
        dict(train=TensorDataset(X, torch.full((64,), 11))), ValueError, "teacher has 10 outputs"),
    "negative labels": (
        dict(train=TensorDataset(X, torch.full((64,), -1))), ValueError, "labels range over"),
    "empty training data": (dict(train=EMPTY), ValueError, "training data is empty"),
    "empty validation data": (dict(val=EMPTY), ValueError, "validation data is empty"),
    "empty loader": (dict(train=DataLoader(EMPTY, batch_size=4)), ValueError,
                     "training data is empty"),
    "dataset without labels": (dict(train=Pairless()), ValueError, "must yield (input, label)"),
    "limits no student meets": (dict(config=cfg(constraints={"max_macs": 10})), ValueError,
                                "no student can meet the limits"),
    "params limit no student meets": (dict(config=cfg(constraints={"max_params": 0.001})),
                                      ValueError, "max_params"),
    "storage that is not a URL": (dict(config=cfg(storage="localhost/db")), ValueError,
                                  "is not a URL"),
    "storage that cannot be reached": (
        dict(config=cfg(storage="postgresql://nobody@127.0.0.1:1/none")), ValueError,
        "cannot open storage"),
    "example input that is not a tensor": (dict(example_input=[1, 2]), TypeError,
                                           "example_input must be a batched tensor"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_search_input(case, tmp_path):
    overrides, error, message = CASES[case]
    kwargs = dict(teacher=make_tiny_net(), train=GOOD, val=GOOD, example_input=X[:1],
                  config=cfg(), out=tmp_path / "run")
    kwargs.update(overrides)
    teacher = kwargs.pop("teacher")
    with pytest.raises(error, match=re.escape(message)):
        run_search(teacher, **kwargs)
    assert not (tmp_path / "run" / "study.db").exists()
    assert not (tmp_path / "run" / "trials.jsonl").exists()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    run_search(make_tiny_net(), train=GOOD, val=GOOD, example_input=X[:1],
               config=cfg(constraints={"max_accuracy_drop": 1.0 - 1e-9}), out=out)
    return out / "best"


def test_corrupt_arch_json(saved, tmp_path):
    bad = tmp_path / "arch.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a protege arch.json"):
        protege.load_student(make_tiny_net(), bad, saved / "student.pt")


def test_arch_json_of_another_space(saved, tmp_path):
    spec = json.loads((saved / "arch.json").read_text())
    spec["arch"]["width.nonexistent"] = 0.5
    bad = tmp_path / "arch.json"
    bad.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="architecture does not fit this teacher"):
        protege.load_student(make_tiny_net(), bad, saved / "student.pt")


def test_mismatched_weights(saved, tmp_path):
    spec = json.loads((saved / "arch.json").read_text())
    spec["arch"] = {name: 1.0 for name in spec["arch"]}  # the teacher's shape, not the pick's
    other = tmp_path / "arch.json"
    other.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="weights do not fit"):
        protege.load_student(make_tiny_net(), other, saved / "student.pt")


def test_corrupt_or_missing_weights(saved, tmp_path):
    junk = tmp_path / "student.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="weights do not fit"):
        protege.load_student(make_tiny_net(), saved / "arch.json", junk)
    with pytest.raises(ValueError, match="weights do not fit"):
        protege.load_student(make_tiny_net(), saved / "arch.json", tmp_path / "missing.pt")


def test_weights_load_without_unpickling_code(saved, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "student.pt"
    torch.save({"x": Evil()}, evil)
    with pytest.raises(ValueError, match="weights do not fit"):
        protege.load_student(make_tiny_net(), saved / "arch.json", evil)


def test_ignored_layer_must_exist():
    with pytest.raises(ValueError, match="'classifier' is not in the model"):
        protege.spaces.derive(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)),
                              torch.randn(1, 4), ignored=["classifier"])
