"""Trial budgets: steps, seconds and a training subset."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_nets import make_tiny_net

import protege
from protege import distill
from protege.distill import DistillConfig, cache_teacher_outputs, train_student
from protege.distill._module import _OneCycle
from protege.search import Config, apply_overrides


@pytest.fixture
def outputs(tiny_net, tiny_data, tmp_path):
    return cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path)


def _train(tiny_net, outputs, val, **settings):
    reports: list[int] = []
    result = train_student(copy.deepcopy(tiny_net), outputs, val,
                           config=DistillConfig(batch_size=64, **settings),
                           report=lambda epoch, acc: reports.append(epoch))
    return result, reports


def test_a_two_step_budget_runs_two_steps_and_validates_the_partial_epoch(
        tiny_net, tiny_data, outputs):
    result, reports = _train(tiny_net, outputs, tiny_data["val"], max_steps=2, epochs=5)
    assert result.steps == 2
    assert reports == [0] and len(result.history) == 1


def test_a_step_budget_spans_epochs_and_replaces_the_epoch_budget(tiny_net, tiny_data, outputs):
    # 192 samples in batches of 64: 3 steps per epoch, so 7 steps take 3 epochs.
    config = DistillConfig(batch_size=64, max_steps=7, epochs=1)
    assert config.trial_epochs(192) == 3
    result, reports = _train(tiny_net, outputs, tiny_data["val"], max_steps=7, epochs=1)
    assert result.steps == 7
    assert reports == [0, 1, 2]


def test_a_samples_budget_trains_on_that_many_fixed_rows(tiny_net, tiny_data, outputs):
    result, reports = _train(tiny_net, outputs, tiny_data["val"], samples=50, epochs=2)
    assert result.samples == 50
    assert result.steps == 2  # one batch of 50 per epoch
    assert reports == [0, 1]
    first, again = outputs.subset(50), outputs.subset(50)
    torch.testing.assert_close(first.inputs, again.inputs)
    rows = [int(torch.nonzero((outputs.inputs == x).flatten(1).all(1))[0]) for x in first.inputs]
    assert len(set(rows)) == 50
    torch.testing.assert_close(first.logits, outputs.logits[rows])
    torch.testing.assert_close(first.targets, outputs.targets[rows])
    assert outputs.subset(500) is outputs  # fewer rows than asked: all of them
    full, _ = _train(tiny_net, outputs, tiny_data["val"], samples=500, epochs=1)
    assert full.samples == 192


def test_a_seconds_budget_stops_at_the_first_step_past_it(tiny_net, tiny_data, outputs):
    result, reports = _train(tiny_net, outputs, tiny_data["val"], max_seconds=1e-9, epochs=50)
    assert result.steps == 1
    assert reports == [0] and len(result.history) == 1


def test_the_schedule_follows_time_when_it_runs_ahead_of_the_steps():
    param = torch.nn.Parameter(torch.zeros(1))
    fraction = [0.0]
    optimizer = torch.optim.AdamW([param], lr=0.1)
    schedule = _OneCycle(optimizer, max_lr=0.1, total_steps=100, pct_start=0.2,
                         clock=lambda: fraction[0])
    optimizer.step()
    schedule.step()
    early = optimizer.param_groups[0]["lr"]
    assert early < 0.1 / 20  # step 1 of 100: still warming up from max_lr / 25
    fraction[0] = 0.2  # a fifth of the time spent after two steps: at the peak
    optimizer.step()
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1, rel=1e-3)
    fraction[0] = 5.0  # far past the time budget: annealed, and stepping on is safe
    for _ in range(3):
        optimizer.step()
        schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 25 / 1e4, rel=1e-3)


@pytest.mark.parametrize(("key", "value"), [("max_steps", 0), ("max_seconds", 0.0),
                                            ("max_seconds", -1.0), ("samples", 0)])
def test_non_positive_budgets_are_rejected(key, value):
    with pytest.raises(ValueError, match=f"distill.{key}: must be"):
        DistillConfig(**{key: value})


def test_the_finetune_drops_the_trial_budgets():
    config = DistillConfig(epochs=3, finetune_epochs=12, max_steps=40, max_seconds=5.0,
                           samples=100)
    final = config.for_finetune()
    assert (final.epochs, final.max_steps, final.max_seconds, final.samples) == (12, None, None,
                                                                                 None)
    assert DistillConfig(epochs=3, finetune_epochs=0).for_finetune().epochs == 3


def test_budget_keys_load_from_yaml_and_set_overrides():
    data = apply_overrides({"distill": {"max_seconds": 2.5}},
                           ["distill.samples=1000", "distill.max_steps=30"])
    config = Config.from_dict(data).distill
    assert (config.samples, config.max_steps, config.max_seconds) == (1000, 30, 2.5)
    seconds = Config.from_dict({"distill": {"max_seconds": 3}}).distill.max_seconds
    assert seconds == 3.0 and isinstance(seconds, float)
    with pytest.raises(ValueError, match="distill.samples"):
        Config.from_dict({"distill": {"samples": -5}})


def test_search_trials_use_the_budgets_and_the_finetune_all_data(tiny_data, tmp_path,
                                                                 monkeypatch):
    runs = []
    real = distill.train_student

    def recording(*args, **kwargs):
        result = real(*args, **kwargs)
        runs.append(result)
        return result

    monkeypatch.setattr(distill, "train_student", recording)
    config = Config.from_dict({
        "n_trials": 2, "strategy": "random",
        "constraints": {"max_accuracy_drop": 0.5},
        "distill": {"batch_size": 64, "samples": 50, "max_steps": 2, "finetune_epochs": 1}})
    result = protege.search(make_tiny_net(), train=tiny_data["train"], val=tiny_data["val"],
                            example_input=torch.randn(1, 1, 8, 8), config=config,
                            out=tmp_path / "run")
    assert result.pick is not None
    *trials, finetune = runs
    assert trials and all((r.samples, r.steps, len(r.history)) == (50, 2, 2) for r in trials)
    assert (finetune.samples, finetune.steps, len(finetune.history)) == (192, 3, 1)
