"""Failing trials, workers sharing one storage, and a run killed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_nets import make_tiny_net

from protege.search import Config, TooManyFailures, run_search
from protege.search import _study as study_module

TESTS = Path(__file__).resolve().parents[1]


def config(**overrides) -> Config:
    data = {"task": "custom", "n_trials": 4, "strategy": "random",
            "constraints": {"max_accuracy_drop": 0.5},
            "distill": {"epochs": 1, "finetune_epochs": 1, "batch_size": 64}}
    data.update(overrides)
    return Config.from_dict(data)


def search(tiny_data, out, cfg, **kwargs):
    return run_search(make_tiny_net(), train=tiny_data["train"], val=tiny_data["val"],
                      example_input=torch.randn(1, 1, 8, 8), config=cfg, out=out, **kwargs)


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tiny_data, tmp_path, monkeypatch):
    real = study_module._train_student
    calls = []

    def flaky(student, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("distillation loss is nan at step 3")
        return real(student, *args, **kwargs)

    monkeypatch.setattr(study_module, "_train_student", flaky)
    result = search(tiny_data, tmp_path / "run", config(n_trials=4))
    failed = [r for r in result.trials if r.state == "failed"]
    assert len(failed) == 1 and "FloatingPointError: distillation loss is nan" in failed[0].error
    assert sum(r.state in ("complete", "pruned") for r in result.trials) == 4  # slot retried
    assert '"state": "failed"' in (tmp_path / "run" / "trials.jsonl").read_text()


def test_a_study_where_most_trials_fail_stops_early(tiny_data, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(study_module, "_train_student", broken)
    with pytest.raises(TooManyFailures, match="5 of the last 5 trials failed .*out of memory"):
        search(tiny_data, tmp_path / "run", config(n_trials=50))


SCRIPT = """
import sys, time, torch
sys.path.insert(0, {tests!r})
from tiny_nets import make_tiny_net
from torch.utils.data import TensorDataset
from protege.search import Config, run_search
from protege.search import _study as study_module

torch.manual_seed(1)
net = make_tiny_net()
x = torch.randn(320, 1, 8, 8, generator=torch.Generator().manual_seed(1))
y = net(x).argmax(1).detach()
config = Config.from_dict({config!r})
hang_at = {hang_at!r}
real = study_module._train_student

if hang_at is not None:
    calls = []
    def trainer(student, *args, **kwargs):
        calls.append(1)
        if len(calls) == hang_at:
            open({marker!r}, "w").close()
            time.sleep(120)
        return real(student, *args, **kwargs)
    study_module._train_student = trainer

run_search(net, train=TensorDataset(x[:192], y[:192]), val=TensorDataset(x[192:256], y[192:256]),
           example_input=x[:1], config=config, out={out!r}, worker={worker!r})
"""


def spawn(tmp_path: Path, name: str, *, cfg: Config, out: Path, worker: bool,
          hang_at: int | None = None) -> subprocess.Popen:
    script = tmp_path / f"{name}.py"
    data = cfg.to_dict()
    script.write_text(textwrap.dedent(SCRIPT).format(
        tests=str(TESTS), config=data, hang_at=hang_at, marker=str(tmp_path / "hanging"),
        out=str(out), worker=worker))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_workers_on_one_journal_finish_exactly_n_trials(tiny_data, tmp_path):
    storage = f"journal:{tmp_path / 'study.journal'}"
    cfg = config(n_trials=6, storage=storage)
    workers = [spawn(tmp_path, f"w{i}", cfg=cfg, out=tmp_path / "run", worker=True)
               for i in range(2)]
    for proc in workers:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    result = search(tiny_data, tmp_path / "run", cfg)  # the owner: finds the budget spent
    numbers = [r.number for r in result.trials]
    assert len(numbers) == len(set(numbers))
    assert sum(r.state in ("complete", "pruned") for r in result.trials) == 6
    assert result.pick is not None


def test_a_run_killed_mid_trial_resumes_without_losing_trials(tiny_data, tmp_path):
    cfg = config(n_trials=4)
    out = tmp_path / "run"
    proc = spawn(tmp_path, "victim", cfg=cfg, out=out, worker=False, hang_at=3)
    deadline = time.monotonic() + 180
    while not (tmp_path / "hanging").exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run never reached its third training"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [line for line in (out / "trials.jsonl").read_text().splitlines()]
    result = search(tiny_data, out, cfg)
    records = [r.to_dict() for r in result.trials]
    assert [json.loads(line) for line in before] == records[:len(before)]  # none lost
    states = [r["state"] for r in records]
    assert states[len(before)] == "failed"  # the trial that was running when killed
    assert sum(s in ("complete", "pruned") for s in states) == 4
    assert len({r["number"] for r in records}) == len(records)
    assert result.pick is not None
