"""Failing trials, a run killed mid-trial or mid-fine-tune, locked storage and the
teacher cache under concurrent writers: nothing is lost and every failure says why."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_nets import make_tiny_net

import protege
from protege import distill
from protege.cli import main
from protege.search import (
    Config,
    StorageError,
    TeacherProfile,
    TooManyFailures,
    TrialRecord,
)
from protege.search import _study as study_module
from protege.search._trial import StudentEvaluator
from protege.search.pick import accuracy_floor, choose

HERE = Path(__file__).resolve().parent
FAST = {"epochs": 1, "finetune_epochs": 1, "batch_size": 64}


def config(**overrides) -> Config:
    data = {"n_trials": 4, "strategy": "random",
            "constraints": {"max_accuracy_drop": 0.5}, "distill": FAST}
    data.update(overrides)
    return Config.from_dict(data)


def search(tiny_data, out, cfg, **kwargs):
    return protege.search(make_tiny_net(), train=tiny_data["train"], val=tiny_data["val"],
                          example_input=torch.randn(1, 1, 8, 8), config=cfg, out=out, **kwargs)


def join(tiny_data, out, cfg):
    """A worker on the run's storage: runs trials, never picks."""
    return protege.create_study(make_tiny_net(), train=tiny_data["train"],
                                val=tiny_data["val"], example_input=torch.randn(1, 1, 8, 8),
                                config=cfg, out=out, worker=True)


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]


def finished(records: list[dict]) -> list[dict]:
    return [r for r in records if r["outcome"] not in ("failed", "running")]


# --- failing trials ------------------------------------------------------------------------

def _nan(module, args, output):  # type: ignore[no-untyped-def]
    return output * float("nan") if module.training else output


def _raiser(error: Exception):  # type: ignore[no-untyped-def]
    def hook(module, args, output):  # type: ignore[no-untyped-def]
        if module.training:
            raise error
        return output
    return hook


OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
FAILURES = {
    "training raises": (_raiser(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM")),
                        "RuntimeError: cuDNN error: CUDNN_STATUS_BAD_PARAM"),
    "NaN loss": (_nan, "FloatingPointError: distillation loss is not finite in epoch 0"),
    "out of memory": (_raiser(OOM("CUDA out of memory. Tried to allocate 2.00 GiB")),
                      "out of memory (OutOfMemoryError: CUDA out of memory. Tried to allocate "
                      "2.00 GiB); a smaller distill.batch_size may fit"),
}


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(
        kind, tiny_data, tmp_path, monkeypatch):
    hook, reason = FAILURES[kind]
    real_build = StudentEvaluator.build

    def build(self, arch, number):  # type: ignore[no-untyped-def]
        student, costs = real_build(self, arch, number)
        if number == 1:  # the student of trial 1 breaks while it trains
            student.register_forward_hook(hook)
        return student, costs

    monkeypatch.setattr(StudentEvaluator, "build", build)
    result = search(tiny_data, tmp_path / "run", config(n_trials=4))
    records = read_records(tmp_path / "run")
    assert records[1]["outcome"] == "failed" and reason in records[1]["reason"]
    assert [r.to_dict() for r in result.trials] == records
    assert len(finished(records)) == 4  # its slot was run again
    assert len({r["number"] for r in records}) == len(records)
    assert result.pick is not None


def test_a_study_where_most_trials_fail_stops_early(tiny_data, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(distill, "train_student", broken)
    with pytest.raises(TooManyFailures, match="5 of the 5 trials run so far failed .*"
                                              "device-side assert.*stopping early"):
        search(tiny_data, tmp_path / "run", config(n_trials=50))
    records = read_records(tmp_path / "run")
    assert len(records) == 5 and all("device-side assert" in r["reason"] for r in records)


def test_the_early_stop_quotes_the_last_failure_not_the_last_trial(tiny_data, tmp_path,
                                                                   monkeypatch):
    real = StudentEvaluator.build

    def build(self, arch, number):  # type: ignore[no-untyped-def]
        if number < 4:
            raise RuntimeError(f"broken student {number}")
        student, costs = real(self, arch, number)
        return student, {**costs, "macs": 1e12}  # over the MAC limit: rejected

    # trials 0-3 fail, trial 4 is rejected: 4 of 5 failed, and the last trial is a
    # rejection, whose reason is no failure's
    monkeypatch.setattr(StudentEvaluator, "build", build)
    with pytest.raises(TooManyFailures, match=r"4 of the 5 trials .* \(last failure, trial 3: "
                                              r"RuntimeError: broken student 3\)"):
        search(tiny_data, tmp_path / "run", config(
            n_trials=50, constraints={"max_accuracy_drop": 0.5, "max_macs": 0.9}))
    assert read_records(tmp_path / "run")[-1]["outcome"] == "rejected"


def test_the_cli_stops_a_failing_study_with_one_line(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(distill, "train_student", broken)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task: digits\nn_trials: 50\nstrategy: random\n"
                   "distill: {epochs: 1, finetune_epochs: 1, batch_size: 128}\n")
    assert main(["-q", "run", str(cfg), "--out", str(tmp_path / "run")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("protege: stopped: 5 of the 5 trials run so far failed")
    assert "run the same command again to resume" in err[-1]
    assert len(read_records(tmp_path / "run")) == 5  # the budget of 50 was not burned


# --- crash and resume ----------------------------------------------------------------------

CLI_CONFIG = """
task: digits
n_trials: {n}
strategy: random
seed: 3
constraints: {{max_accuracy_drop: 0.3}}
distill: {{epochs: 2, finetune_epochs: 2, batch_size: 128}}
"""


def _launch(args: list[str], *, hang: str, marker: Path) -> subprocess.Popen:
    env = dict(os.environ, PROTEGE_TEST_HANG=hang, PROTEGE_TEST_MARKER=str(marker),
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(HERE / "hang_cli.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_when_hanging(proc: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run never reached the point to kill"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _expected_pick(out: Path, records: list[dict], cfg: Config) -> int:
    """The trial an uninterrupted run's pick takes from these same records."""
    teacher = TeacherProfile(**json.loads((out / "summary.json").read_text())["teacher"])
    done = [TrialRecord.from_dict(r) for r in records if r["outcome"] == "trained"]
    chosen = choose(done, floor=accuracy_floor(teacher, cfg))
    assert chosen is not None
    return chosen[0].number


@pytest.mark.slow  # keeps the default suite near 5 min; `pytest -m slow` runs it
def test_a_run_killed_mid_trial_and_mid_finetune_resumes_with_the_same_command(tmp_path):
    n = 5
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(CLI_CONFIG.format(n=n))
    out = tmp_path / "run"
    command = ["-q", "run", str(cfg_path), "--out", str(out)]

    # 1. SIGKILL while the third trial trains.
    _kill_when_hanging(_launch(command, hang="trial:3", marker=tmp_path / "m1"), tmp_path / "m1")
    before = read_records(out)
    assert len(before) >= 2 and all(r["outcome"] != "failed" for r in before)

    # 2. The same command resumes; SIGKILL it again while the pick is fine-tuned.
    _kill_when_hanging(_launch(command, hang="finetune", marker=tmp_path / "m2"),
                       tmp_path / "m2")
    middle = read_records(out)
    assert middle[:len(before)] == before  # no finished trial lost or changed
    killed = middle[len(before)]
    assert killed["outcome"] == "failed" and "stopped while it ran" in killed["reason"]
    assert len(finished(middle)) == n
    assert not (out / "best" / "student.pt").exists()

    # 3. The same command again: no trial runs, the pick is fine-tuned and saved.
    done = subprocess.run([sys.executable, str(HERE / "hang_cli.py"), *command],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after = read_records(out)
    assert after == middle  # exactly n_trials, none run twice, none lost
    numbers = [r["number"] for r in after]
    assert numbers == sorted(set(numbers))
    summary = json.loads((out / "summary.json").read_text())
    cfg = Config.from_dict(__import__("yaml").safe_load(cfg_path.read_text())
                           | {"n_trials": n}).resolve()
    assert summary["pick"]["trial"] == _expected_pick(out, after, cfg)
    assert (out / "best" / "student.pt").is_file() and (out / "best" / "arch.json").is_file()


# --- storage -------------------------------------------------------------------------------

def test_a_locked_sqlite_storage_says_to_use_postgresql_or_a_journal(tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = sqlite3.connect(out / "study.db")
    holder.execute("CREATE TABLE other_writer (x)")
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        with pytest.raises(StorageError, match="locked by another process: .*PostgreSQL "
                                               r"\(--storage postgresql://.*journal"):
            search(tiny_data, out, config(storage=f"sqlite:///{out / 'study.db'}?timeout=0.2"))
    finally:
        holder.rollback()
        holder.close()
    assert sorted(p.name for p in out.iterdir()) == ["study.db"]  # nothing else written


# --- the teacher cache under concurrent writers --------------------------------------------

def _worker(path: str, value: int, rounds: int, folder: str, start, both) -> None:  # type: ignore[no-untyped-def]
    """One worker: rewrites ``path`` ``rounds`` times, then computes the teacher cache."""
    from tiny_nets import make_tiny_net

    from protege.common import atomic_write
    from protege.distill import cache_teacher_outputs

    payload = {"logits": torch.full((512, 512), float(value))}
    start.wait()
    for _ in range(rounds):
        with atomic_write(path, binary=True) as handle:
            torch.save(payload, handle)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    net = make_tiny_net()
    data = torch.utils.data.TensorDataset(x, net(x).argmax(1).detach())
    both.wait()  # the two workers compute and write the same teacher outputs at once
    cache_teacher_outputs(net, data, cache_dir=folder)


@pytest.mark.slow  # keeps the default suite near 5 min; `pytest -m slow` runs it
def test_the_teacher_cache_written_by_two_workers_at_once_is_never_corrupt(tmp_path):
    context = multiprocessing.get_context("spawn")
    start, both = context.Barrier(3), context.Barrier(2)
    path = tmp_path / "cache" / "teacher_outputs.pt"
    folder = tmp_path / "shared"
    workers = [context.Process(target=_worker,
                               args=(str(path), value, 40, str(folder), start, both))
               for value in (1, 2)]
    for proc in workers:
        proc.start()
    start.wait()
    reads = 0
    while any(proc.is_alive() for proc in workers) or reads == 0:
        if path.exists():
            logits = torch.load(path, weights_only=True)["logits"]  # never half a file
            assert logits.shape == (512, 512) and float(logits.min()) == float(logits.max())
            assert float(logits[0, 0]) in (1.0, 2.0)
            reads += 1
    for proc in workers:
        proc.join(120)
        assert proc.exitcode == 0
    assert reads > 1
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    (cached,) = folder.glob("teacher_outputs-*.pt")
    assert torch.load(cached, weights_only=True)["logits"].shape == (64, 10)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_a_trial_skipped_because_other_workers_spent_the_budget_is_not_reported(
        tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    search(tiny_data, out, config(n_trials=2))
    real = study_module._active
    raced = []

    def racing(records):  # type: ignore[no-untyped-def]
        # Until it starts a trial, this worker misses the ones others just finished.
        if len(records) == 2:
            raced.append(True)
            return 0
        return real(records)

    monkeypatch.setattr(study_module, "_active", racing)
    seen = []
    worker = join(tiny_data, out, config(n_trials=2))
    worker.optimize(callbacks=[lambda study, record: seen.append(record)])
    assert raced  # the worker did start a trial the budget no longer had room for
    spent = [t for t in worker.optuna_study.get_trials() if t.user_attrs.get("budget_spent")]
    assert [t.number for t in spent] == [2]
    assert seen == []  # the budget-spent trial is no record, and no callback ran on it
    assert [r.number for r in worker.trials] == [0, 1]
    assert len(read_records(out)) == 2


def test_a_damaged_teacher_cache_is_computed_again(tiny_data, tmp_path):
    out = tmp_path / "run"
    search(tiny_data, out, config(n_trials=1))
    (cached,) = (out / "cache").glob("teacher_outputs-*.pt")
    good = torch.load(cached, weights_only=True)["logits"]
    cached.write_bytes(cached.read_bytes()[:100])  # e.g. a disk that filled up
    search(tiny_data, out, config(n_trials=2))
    assert torch.equal(torch.load(cached, weights_only=True)["logits"], good)
    assert len(finished(read_records(out))) == 2


def test_the_failure_guard_every_backend_uses_counts_from_its_first_five_trials():
    from protege.search._study import FailureGuard

    def record(number: int, outcome: str) -> TrialRecord:
        return TrialRecord.from_dict({"number": number, "outcome": outcome, "arch": {},
                                      "reason": f"why {number}"})

    guard = FailureGuard(0.5)
    kinds = ["failed", "trained", "failed", "rejected"]
    assert [guard.add(record(i, kind)) for i, kind in enumerate(kinds)] == [None] * 4
    assert guard.add(record(4, "trained")) is None  # 2 of 5 failed: not more than half
    error = guard.add(record(5, "failed"))  # 3 of 6: not more than half either
    assert error is None
    error = guard.add(record(6, "failed"))  # 4 of 7
    assert isinstance(error, TooManyFailures) and "last failure, trial 6: why 6" in str(error)
