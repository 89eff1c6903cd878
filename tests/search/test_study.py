from __future__ import annotations

import json

import optuna
import pytest
import torch
from tiny_nets import make_tiny_net

import protege
from protege.distill import DistillConfig
from protege.search import Config, Constraints, run_search
from protege.search import _study as study_module

FAST = {"epochs": 1, "finetune_epochs": 1, "batch_size": 64}


def config(**overrides) -> Config:
    data = {"task": "custom", "n_trials": 4, "strategy": "random",
            "constraints": {"max_accuracy_drop": 0.5, "max_macs": 0.6}, "distill": FAST}
    data.update(overrides)
    return Config.from_dict(data)


def search(tiny_data, out, cfg, **kwargs):
    return run_search(make_tiny_net(), train=tiny_data["train"], val=tiny_data["val"],
                      test=tiny_data["test"], example_input=torch.randn(1, 1, 8, 8),
                      config=cfg, out=out, **kwargs)


@pytest.fixture
def train_calls(monkeypatch):
    """Counts the distillation runs of trials and of the final fine-tune."""
    calls: list[int] = []
    real = study_module._train_student

    def counting(student, *args, **kwargs):
        calls.append(sum(p.numel() for p in student.parameters()))
        return real(student, *args, **kwargs)

    monkeypatch.setattr(study_module, "_train_student", counting)
    return calls


def test_run_writes_the_run_folder(tiny_data, tmp_path):
    seen = []
    result = search(tiny_data, tmp_path / "run", config(), callbacks=[seen.append])
    run = tmp_path / "run"
    for name in ("config.yaml", "study.db", "trials.jsonl", "pareto.json", "summary.json",
                 "best/arch.json", "best/student.pt", "report.md", "front.png"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "trials.jsonl").read_text().splitlines()]
    assert [r["number"] for r in lines] == [0, 1, 2, 3] == [r.number for r in seen]
    for record in lines:
        assert {"number", "state", "arch", "accuracy", "macs", "params", "train_seconds",
                "pruned_reason"} <= set(record)
    front = json.loads((run / "pareto.json").read_text())
    assert front and all({"trial", "arch", "accuracy", "macs", "params"} <= set(m) for m in front)
    assert [m["trial"] for m in front] == [r.number for r in result.front]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher"]["val_accuracy"] == 1.0
    assert summary["pick"]["trial"] == result.pick.trial
    assert summary["pick"]["test_accuracy"] is not None
    assert summary["pick"]["macs"] <= 0.6 * summary["teacher"]["macs"]


def test_saved_student_rebuilds_with_identical_outputs(tiny_data, tmp_path):
    result = search(tiny_data, tmp_path / "run", config(n_trials=3))
    student = protege.load_student(make_tiny_net(), tmp_path / "run/best/arch.json",
                                   tmp_path / "run/best/student.pt")
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(student(x), result.student(x), rtol=0, atol=0)


def test_student_over_the_mac_limit_never_trains(tiny_data, tmp_path, train_calls):
    limits = {"max_accuracy_drop": 0.5, "max_macs": 0.3}
    result = search(tiny_data, tmp_path / "run", config(n_trials=8, constraints=limits))
    rejected = [r for r in result.trials if r.state == "pruned"]
    trained = [r for r in result.trials if r.state == "complete" and r.duplicate_of is None]
    assert rejected, "the MAC limit should reject some random students"
    for record in rejected:
        assert record.pruned_reason.startswith("macs ")
        assert record.accuracy is None and record.train_seconds is None
    # One distillation per trained trial, plus the pick's fine-tune; none for rejected ones.
    assert len(train_calls) == len(trained) + 1


def test_resume_keeps_finished_trials(tiny_data, tmp_path, train_calls):
    out = tmp_path / "run"
    first = search(tiny_data, out, config(n_trials=3))
    calls_before = len(train_calls)
    second = search(tiny_data, out, config(n_trials=5))
    assert [r.to_dict() for r in second.trials[:3]] == [r.to_dict() for r in first.trials]
    assert len(second.trials) == 5
    new_trainings = len(train_calls) - calls_before
    assert new_trainings <= 2 + 1  # at most the two new trials and one fine-tune
    storage = optuna.load_study(study_name="protege", storage=f"sqlite:///{out / 'study.db'}")
    assert len(storage.trials) == 5


def test_impossible_mac_limit_is_a_clear_error_before_any_trial(tiny_data, tmp_path):
    with pytest.raises(ValueError, match="no student can meet the limits"):
        search(tiny_data, tmp_path / "run", config(constraints={"max_macs": 0.001}))
    assert not (tmp_path / "run" / "study.db").exists()


def test_public_api_runs_a_search(tiny_data, tmp_path):
    result = protege.search(
        make_tiny_net(), train=tiny_data["train"], val=tiny_data["val"],
        example_input=torch.randn(1, 1, 8, 8), n_trials=2, strategy="tpe",
        constraints=Constraints(max_accuracy_drop=0.5), distill=DistillConfig(**FAST),
        out=tmp_path / "api",
    )
    assert len(result.trials) == 2 and result.pick is not None
    assert result.pick.test_accuracy is None  # no test data given


def test_non_module_teacher_is_rejected(tiny_data, tmp_path):
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        run_search(object(), train=tiny_data["train"], val=tiny_data["val"],  # type: ignore
                   example_input=torch.randn(1, 1, 8, 8), config=config(), out=tmp_path)


@pytest.mark.parametrize("level", [2, 3])
def test_deeper_levels_search_and_rebuild(tiny_data, tmp_path, level):
    cfg = config(n_trials=3, level=level, constraints={"max_accuracy_drop": 0.5},
                 space={"options": {"width.*": [0.5, 1.0]}})
    result = search(tiny_data, tmp_path / "run", cfg)
    kinds = {name.split(".")[0] for name in result.trials[0].arch}
    assert kinds >= ({"width", "depth", "rank"} if level == 3 else {"width", "depth"})
    assert all(value in (0.5, 1.0) for name, value in result.trials[0].arch.items()
               if name.startswith("width."))
    student = protege.load_student(make_tiny_net(), tmp_path / "run/best/arch.json",
                                   tmp_path / "run/best/student.pt")
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(student(x), result.student(x), rtol=0, atol=0)


def test_latency_as_objective_and_limit(tiny_data, tmp_path):
    cfg = config(n_trials=3, objectives=["accuracy", "latency"],
                 constraints={"max_accuracy_drop": 0.5, "max_latency_ms": 1000.0})
    result = search(tiny_data, tmp_path / "run", cfg)
    assert all(r.latency_ms is not None and r.latency_ms > 0 for r in result.trials)
    assert result.teacher.latency_ms is not None and result.teacher.latency_ms > 0
    front = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert front and all(m["latency_ms_predicted"] > 0 and m["latency_ms_measured"] > 0
                         for m in front)


def test_impossible_latency_limit_is_a_clear_error(tiny_data, tmp_path):
    cfg = config(constraints={"max_latency_ms": 1e-6})
    with pytest.raises(ValueError, match="no student can meet the limits.*latency"):
        search(tiny_data, tmp_path / "run", cfg)
