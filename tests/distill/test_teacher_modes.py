from __future__ import annotations

import copy

import pytest
import torch

from protege.distill import DistillConfig, cache_teacher_outputs, train_student


def _count_forwards(model: torch.nn.Module) -> list[int]:
    """Counts ``model``'s forward passes (deep copies made afterwards count too)."""
    calls = [0]
    model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_cached_hints_are_computed_once_for_several_trials(tiny_net, tiny_data, tmp_path):
    config = DistillConfig(hint_weight=1.0, epochs=1, batch_size=64)
    students = [copy.deepcopy(tiny_net) for _ in range(3)]
    calls = _count_forwards(tiny_net)
    first = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path,
                                  config=config, batch_size=64)
    after_cache = calls[0]
    for seed, student in enumerate(students):
        again = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path,
                                      config=config)
        torch.testing.assert_close(again.hints["pw"], first.hints["pw"])
        train_student(student, again, tiny_data["val"], config=config, seed=seed,
                      teacher=tiny_net)
    assert calls[0] == after_cache  # no trial ran the teacher


def test_online_teacher_runs_on_every_batch(tiny_net, tiny_data, tmp_path):
    outputs = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path)
    student = copy.deepcopy(tiny_net)
    calls = _count_forwards(tiny_net)
    config = DistillConfig(teacher_mode="online", epochs=2, batch_size=64)
    result = train_student(student, outputs, tiny_data["val"], config=config,
                           teacher=tiny_net)
    assert calls[0] == 2 * 3  # 192 samples, batches of 64, two epochs
    assert len(result.history) == 2
    assert not tiny_net.training  # the teacher stays in eval mode


def test_online_hints_match_cached_hints(tiny_net, tiny_data, tmp_path):
    cached = DistillConfig(hint_weight=1.0, epochs=1, batch_size=64)
    online = DistillConfig(hint_weight=1.0, epochs=1, batch_size=64, teacher_mode="online")
    outputs = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path, config=cached)
    a = train_student(copy.deepcopy(tiny_net), outputs, tiny_data["val"], config=cached)
    b = train_student(copy.deepcopy(tiny_net), outputs, tiny_data["val"], config=online,
                      teacher=tiny_net)
    assert a.history == pytest.approx(b.history)


def test_augmentation_runs_the_teacher_online(tiny_net, tiny_data, tmp_path):
    outputs = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path)
    config = DistillConfig(epochs=1, batch_size=64)

    def augment(x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)

    with pytest.raises(ValueError, match="augmentation.*teacher="):
        train_student(copy.deepcopy(tiny_net), outputs, tiny_data["val"], config=config,
                      augment=augment)
    student = copy.deepcopy(tiny_net)
    calls = _count_forwards(tiny_net)
    train_student(student, outputs, tiny_data["val"], config=config, augment=augment,
                  teacher=tiny_net)
    assert calls[0] == 3


def test_ce_needs_no_teacher_even_online(tiny_net, tiny_data, tmp_path):
    outputs = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path)
    config = DistillConfig(loss="ce", teacher_mode="online", epochs=1, batch_size=64)
    result = train_student(copy.deepcopy(tiny_net), outputs, tiny_data["val"], config=config)
    assert len(result.history) == 1


def test_hints_without_cached_features_or_teacher_fail_clearly(tiny_net, tiny_data, tmp_path):
    outputs = cache_teacher_outputs(tiny_net, tiny_data["train"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="cache_teacher_outputs"):
        train_student(copy.deepcopy(tiny_net), outputs, tiny_data["val"],
                      config=DistillConfig(hint_weight=1.0, epochs=1))


@pytest.mark.parametrize(("key", "value"), [("loss", "fitnet"), ("teacher_mode", "lazy"),
                                            ("hint_weight", -1.0), ("dkd_beta", -1.0),
                                            ("hint_layers", 0)])
def test_config_names_the_bad_key(key, value):
    with pytest.raises(ValueError, match=f"distill.{key}"):
        DistillConfig(**{key: value})
