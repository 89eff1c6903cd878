"""Bad input gets a clear error that names the problem and what to do, exits non-zero,
and leaves no half-written run (nor damages an earlier one)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from tiny_nets import TinyNet, make_tiny_net
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import protege
from protege.cli import main
from protege.search import Config

X = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0))
GOOD = TensorDataset(X, Y)
EMPTY = TensorDataset(torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long))


class Pairless(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return X[i]


class Wrapped(nn.Module):
    """The tiny teacher followed by a head that misbehaves in one of several ways."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.body = make_tiny_net()
        self.head = head

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return self.head(self.body(x))


class NumpyHead(nn.Module):
    """Leaves autograd through numpy: fine without gradients, untraceable with them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.numpy() * 2.0)


class TupleHead(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


class MapHead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, None, None].expand(-1, -1, 2, 2)


class TrainingTupleHead(nn.Module):
    """Returns ``(logits, aux)`` in training mode only, as Inception-style networks do."""

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        return (x, x) if self.training else x


class NanHead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float("nan")


def cfg(**extra) -> Config:
    return Config.from_dict({"n_trials": 1,
                             "distill": {"epochs": 1, "finetune_epochs": 1}, **extra})


# case -> (create_study overrides, error type, text the message must contain)
SEARCH_CASES = {
    "teacher is not a module": (dict(teacher=lambda x: x), TypeError,
                                "the teacher must be a torch.nn.Module, got function"),
    "example input is not a tensor": (dict(example_input=[1, 2]), TypeError,
                                      "example_input must be a batched tensor"),
    "teacher fails on the example input (names the module)": (
        dict(example_input=torch.randn(1, 1, 5, 5)), ValueError,
        "the teacher fails on example_input of shape (1, 1, 5, 5) in module 'fc1' (Linear)"),
    "teacher cannot be traced with gradients (names the module)": (
        dict(teacher=Wrapped(NumpyHead())), ValueError,
        "tracing the teacher failed in module 'head' NumpyHead: RuntimeError: Can't call numpy()"),
    "teacher returns a tuple": (dict(teacher=Wrapped(TupleHead())), ValueError,
                                "must return a tensor of logits (batch, classes), got tuple"),
    "teacher returns a tuple in training mode only": (
        dict(teacher=Wrapped(TrainingTupleHead())), ValueError,
        "the teacher Wrapped returns a tuple in training mode but a tensor of shape (1, 10) "
        "in eval mode"),
    "integer inputs where the example input is float": (
        dict(train=TensorDataset(X.long(), Y)), ValueError,
        "the training data has inputs of dtype torch.int64 but example_input has "
        "torch.float32"),
    "teacher returns a feature map": (dict(teacher=Wrapped(MapHead())), ValueError,
                                      "must return logits of shape (batch, classes), got "
                                      "(1, 10, 2, 2)"),
    "teacher outputs are NaN": (dict(teacher=Wrapped(NanHead())), ValueError,
                                "outputs on example_input are not finite"),
    "teacher has nothing to shrink": (
        dict(teacher=nn.Sequential(nn.Flatten(), nn.Linear(64, 10))), ValueError,
        "found no choice in the teacher's graph"),
    "teacher has fewer outputs than the labels' classes": (
        dict(train=TensorDataset(X, torch.full((64,), 11))), ValueError,
        "labels of the training data range over [11, 11] but the teacher has 10 outputs"),
    "negative labels": (dict(train=TensorDataset(X, torch.full((64,), -1))), ValueError,
                        "labels of the training data range over [-1, -1]"),
    "validation labels out of range": (dict(val=TensorDataset(X, torch.full((64,), 10))),
                                       ValueError, "labels of the validation data range over"),
    "test labels out of range": (dict(test=TensorDataset(X, torch.full((64,), 12))), ValueError,
                                 "labels of the test data range over"),
    "one-hot labels": (dict(train=TensorDataset(X, nn.functional.one_hot(Y, 10))), ValueError,
                       "one class index per sample (shape (N,)), got labels of shape (64, 10)"),
    "inputs of another shape than the example input": (
        dict(val=TensorDataset(torch.randn(8, 1, 7, 7), Y[:8])), ValueError,
        "the validation data has inputs of shape (1, 7, 7) but example_input has (1, 8, 8)"),
    "empty training data": (dict(train=EMPTY), ValueError, "the training data is empty"),
    "empty validation data": (dict(val=EMPTY), ValueError, "the validation data is empty"),
    "empty loader": (dict(train=DataLoader(EMPTY, batch_size=4)), ValueError,
                     "the training data is empty"),
    "one-sample training loader": (dict(train=DataLoader(TensorDataset(X[:1], Y[:1]))),
                                   ValueError, "the training data has 1 sample"),
    "dataset without labels": (dict(train=Pairless()), ValueError,
                               "the training data yields a tensor of shape (4, 1, 8, 8), not "
                               "(input, label) pairs"),
    "MAC limit no student meets (says the smallest)": (
        dict(config=cfg(constraints={"max_macs": 10})), ValueError,
        "no student can meet the limits: even the smallest student in the space breaks them "
        "(macs"),
    "params limit no student meets (says the smallest)": (
        dict(config=cfg(constraints={"max_params": 0.001})), ValueError, "max_params"),
    "limit unreachable in a space narrowed by options": (
        dict(config=cfg(constraints={"max_macs": 0.5}, space={"options": {"width.*": [1.0]}})),
        ValueError, "the smallest achievable is"),
    "option override that matches no choice": (
        dict(config=cfg(space={"options": {"width.nosuchlayer": [0.5, 1.0]}})), ValueError,
        "option overrides match no choice"),
    "ignored layer that is not in the teacher": (
        dict(config=cfg(space={"ignored": ["classifier"]})), ValueError,
        "ignored layer 'classifier' is not in the model"),
    "storage that is not a URL": (dict(config=cfg(storage="localhost/db")), ValueError,
                                  "is not a URL"),
    "storage that cannot be reached": (
        dict(config=cfg(storage="postgresql://nobody@127.0.0.1:1/none")), ValueError,
        "cannot open storage postgresql://nobody@127.0.0.1:1/none: OperationalError"),
    "journal storage outside the run folder": (
        dict(config=cfg(storage="journal:{tmp}/elsewhere/study.journal")), ValueError,
        "outside the run folder"),
    "sqlite storage escaping the run folder with ..": (
        dict(config=cfg(storage="sqlite:///{tmp}/run/../escaped.db")), ValueError,
        "outside the run folder"),
    "a worker of a Ray study (contradictory settings)": (
        dict(config=cfg(backend="ray"), worker=True), ValueError,
        "backend: ray schedules its own workers"),
}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the SQLite study, which opening may touch) by hash."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "study.db"}


@pytest.mark.parametrize("case", list(SEARCH_CASES))
def test_bad_search_input(case, tmp_path):
    overrides, error, message = SEARCH_CASES[case]
    kwargs = dict(teacher=make_tiny_net(), train=GOOD, val=GOOD, example_input=X[:1],
                  config=cfg(), out=tmp_path / "run")
    kwargs.update(overrides)
    config = kwargs["config"]
    if config.storage:
        kwargs["config"] = Config.from_dict(config.to_dict()
                                            | {"storage": config.storage.format(tmp=tmp_path)})
    teacher = kwargs.pop("teacher")
    with pytest.raises(error, match=re.escape(message)):
        protege.create_study(teacher, **kwargs)
    assert list(tmp_path.iterdir()) == []  # no run folder, no stray storage file


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of the tiny teacher: its folder and its saved student."""
    out = tmp_path_factory.mktemp("finished") / "run"
    protege.search(make_tiny_net(), train=GOOD, val=GOOD, example_input=X[:1],
                   config=cfg(constraints={"max_accuracy_drop": 1.0 - 1e-9}), out=out)
    return out


RESUME_CASES = {
    "resume with another search space": (
        dict(space={"options": {"width.*": [0.5, 1.0]}}), "made for another search space"),
    "resume with other objectives": (
        dict(objectives=["accuracy", "macs", "params"]),
        "has 2 objectives but the config lists 3 (accuracy, macs, params)"),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resuming_with_a_mismatched_config_is_refused(case, finished):
    changes, message = RESUME_CASES[case]
    before = _snapshot(finished)
    with pytest.raises(ValueError, match=re.escape(message)):
        protege.search(make_tiny_net(), train=GOOD, val=GOOD, example_input=X[:1],
                       config=cfg(**changes), out=finished)
    assert _snapshot(finished) == before  # the earlier run is untouched


CLI_CASES = {
    "unknown strategy": ("task: digits\nstrategy: annealing\n", [],
                         "strategy: unknown strategy 'annealing'; known: "),
    "unknown objective": ("task: digits\nobjectives: [accuracy, flops]\n", [],
                          "unknown objective 'flops'"),
    "a cost listed twice (contradictory)": ("task: digits\nobjectives: [accuracy, macs, macs]\n",
                                            [], "a cost is listed twice"),
    "unknown task": ("task: nosuchtask\n", [], "unknown task 'nosuchtask'; known tasks:"),
    "malformed YAML": ("task: digits\ndistill: {epochs: 1\n", [], "not valid YAML"),
    "YAML that is not a mapping": ("- task: digits\n", [], "expected a mapping of keys"),
    "unknown YAML key": ("task: digits\ndistill: {epochz: 1}\n", [],
                         "unknown key 'distill.epochz'; known keys under distill:"),
    "value of the wrong type": ("task: digits\nlevel: two\n", [], "level: expected int, got 'two'"),
    "out-of-range --set": ("task: digits\n", ["--set", "n_trials=-3"], "n_trials: must be >= 1"),
    "out-of-range --set of a limit": (
        "task: digits\n", ["--set", "constraints.max_accuracy_drop=1.5"],
        "constraints.max_accuracy_drop: must be in [0, 1)"),
    "--set without a value": ("task: digits\n", ["--set", "n_trials"], "expected KEY=VALUE"),
    "--set of an unknown key": ("task: digits\n", ["--set", "rules.curv=false"],
                                "unknown key 'rules.curv'"),
    "missing config file": (None, [], "config file not found"),
    "--storage outside the run folder": (
        "task: digits\nn_trials: 1\n", ["--storage", "journal:{tmp}/study.journal"],
        "outside the run folder"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_mistakes_exit_2_with_one_line(case, tmp_path, capsys):
    text, extra, message = CLI_CASES[case]
    config = tmp_path / "bad.yaml"
    if text is not None:
        config.write_text(text)
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    assert main(["run", str(config), "--out", str(tmp_path / "run"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("protege: error: ")
    assert "\n" not in err  # one line, no traceback
    assert not (tmp_path / "run").exists()


def _arch(saved: Path, tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    spec = json.loads((saved / "arch.json").read_text())
    change(spec)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(spec))
    return path


def _evil(tmp_path: Path) -> Path:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (Path(tmp_path / "pwned").touch, ())

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    return path


# case -> (arch.json maker, student.pt maker, teacher, message)
LOAD_CASES = {
    "arch.json that is not JSON": (
        lambda saved, tmp: (tmp / "arch.json", (tmp / "arch.json").write_text("{not json"))[0],
        None, None, "not a protege arch.json"),
    "missing arch.json": (lambda saved, tmp: tmp / "nope.json", None, None,
                          "not a protege arch.json"),
    "arch.json without its architecture": (
        lambda saved, tmp: _arch(saved, tmp, lambda s: s.pop("arch")), None, None,
        "not a protege arch.json"),
    "arch.json of another space": (
        lambda saved, tmp: _arch(saved, tmp, lambda s: s["arch"].update({"width.x": 0.5})),
        None, None, "architecture does not fit this teacher"),
    "student files of another teacher": (None, None, TinyNet(num_classes=5),
                                         "size mismatch for fc.weight"),
    "weights of another architecture": (
        lambda saved, tmp: _arch(saved, tmp, lambda s: s.update(
            arch={name: 1.0 for name in s["arch"]})),
        None, None, "weights do not fit"),
    "student.pt that is not a checkpoint": (
        None, lambda tmp: (tmp / "junk.pt", (tmp / "junk.pt").write_bytes(b"junk"))[0], None,
        "weights do not fit"),
    "missing student.pt": (None, lambda tmp: tmp / "missing.pt", None, "weights do not fit"),
    "student.pt that unpickles code": (None, _evil, None, "weights do not fit"),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_load_student_refuses_bad_files(case, finished, tmp_path):
    make_arch, make_state, teacher, message = LOAD_CASES[case]
    saved = finished / "best"
    arch = make_arch(saved, tmp_path) if make_arch else saved / "arch.json"
    state = make_state(tmp_path) if make_state else saved / "student.pt"
    with pytest.raises(ValueError, match=re.escape(message)):
        protege.load_student(teacher or make_tiny_net(), arch, state)
    assert not (tmp_path / "pwned").exists()  # weights_only: no code ran


def test_the_saved_student_loads(finished):
    student = protege.load_student(make_tiny_net(), finished / "best" / "arch.json",
                                   finished / "best" / "student.pt")
    assert student(X[:2]).shape == (2, 10)
