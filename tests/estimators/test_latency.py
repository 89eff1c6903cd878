from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import protege.estimators._latency_predictor as lp
from protege.estimators import (
    LatencyPredictor,
    LatencyStats,
    TimingConfig,
    machine_fingerprint,
    measure_latency,
    measure_latency_stats,
)
from protege.estimators._trace import trace
from protege.spaces import derive

FAST = TimingConfig(warmup=1, repeats=3, min_repeat_ms=0.0)
LAYER_MS = 0.01
FORWARD_MS = 0.05


def _fake_stats(ms: float) -> LatencyStats:
    return LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, min_ms=ms, repeats=1, number=1,
                        threads=1)


@pytest.fixture
def counted(monkeypatch):
    """Replace both timers: every layer takes LAYER_MS; a whole student takes
    LAYER_MS per layer call plus FORWARD_MS, so the correction has an exact answer."""
    counts = {"layers": 0, "students": 0}

    def time_layer(fn, config):
        counts["layers"] += 1
        return _fake_stats(LAYER_MS)

    def time_student(model, example, *, batch_size, config):
        counts["students"] += 1
        calls = len(trace(model, example, keep_modules=False).calls)
        return _fake_stats(LAYER_MS * calls + FORWARD_MS)

    monkeypatch.setattr(lp, "time_callable", time_layer)
    monkeypatch.setattr(lp, "measure_latency_stats", time_student)
    return counts


@pytest.fixture
def space(tiny_net):
    return derive(tiny_net, torch.randn(1, 1, 8, 8))


def test_measured_latency_is_a_median_with_its_spread(tiny_net):
    before = torch.get_num_threads()
    x = torch.randn(1, 1, 8, 8)
    stats = measure_latency_stats(tiny_net, x, batch_size=2, config=FAST)
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.spread >= 0 and stats.threads == 1 and stats.repeats == 3
    assert measure_latency(tiny_net, x, warmup=0, repeats=2) > 0
    assert torch.get_num_threads() == before
    assert not tiny_net.training
    with pytest.raises(ValueError):
        measure_latency(tiny_net, x, batch_size=0)


def test_fingerprint_names_the_settings():
    assert machine_fingerprint() == machine_fingerprint(threads=1, batch_size=1)
    assert machine_fingerprint(threads=2) != machine_fingerprint(threads=1)


def test_trace_lists_layer_calls_and_outside_ops(tiny_net):
    tr = trace(tiny_net, torch.randn(1, 1, 8, 8), keep_modules=False)
    assert [c.kind for c in tr.calls][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert tr.calls[0].key.endswith("@((1, 1, 8, 8),)")
    assert tr.calls[0].macs == 8 * 9 * 64
    assert tr.other_ops >= 5  # two residual adds, three functional relus, a flatten


def test_table_is_built_once_and_reused(space, counted, tmp_path):
    first = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), cache_dir=tmp_path,
                                       timing=FAST, probes=3, calibration=5)
    layers, students = counted["layers"], counted["students"]
    assert layers == len(first.table) > 0 and students == 5
    assert first.measurements == layers + students
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert set(json.loads((folder / "layers.json").read_text())) == set(first.table)

    second = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), cache_dir=tmp_path,
                                        timing=FAST, probes=3, calibration=5)
    assert counted == {"layers": layers, "students": students}  # nothing timed again
    assert second.measurements == 0
    arch = space.sample(np.random.default_rng(99))
    assert second.predict(arch) == first.predict(arch)


def test_prediction_follows_the_correction(space, counted, tmp_path):
    predictor = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), cache_dir=tmp_path,
                                           timing=FAST, probes=3, calibration=6)
    for seed in range(3):
        arch = space.sample(np.random.default_rng(seed + 100))
        student = space.materialize(arch)
        calls = len(trace(student, torch.randn(1, 1, 8, 8), keep_modules=False).calls)
        assert predictor.predict(arch) == pytest.approx(LAYER_MS * calls + FORWARD_MS, rel=0.05)


def test_unmeasured_layers_fall_back_to_a_regression(space, counted, tmp_path):
    predictor = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), cache_dir=tmp_path,
                                           timing=FAST, probes=0, calibration=3)
    predictor.table = {k: v for i, (k, v) in enumerate(predictor.table.items()) if i % 2}
    predictor.misses = 0
    assert predictor.predict(space.smallest()) > 0
    assert predictor.misses > 0


def test_extend_times_only_missing_layers_and_saves_them(space, counted, tmp_path):
    predictor = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), cache_dir=tmp_path,
                                           timing=FAST, probes=0, calibration=3)
    student = space.materialize(space.sample(np.random.default_rng(5)))
    before = counted["layers"]
    timed = predictor.extend(student)
    assert counted["layers"] - before == timed
    assert predictor.extend(student) == 0
    saved = json.loads(predictor.table_path.read_text())
    assert set(saved) == set(predictor.table)


class _Tokens(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids).mean(1))


def test_layers_fed_integer_ids_are_timed_with_integer_inputs():
    ids = torch.randint(0, 50, (1, 6))
    calls = trace(_Tokens(), ids, keep_modules=True).calls
    assert calls[0].kind == "Embedding" and calls[0].dtypes == (torch.int64,)
    for call in calls:
        assert lp._time_layer(call, FAST) > 0
    assert measure_latency_stats(_Tokens(), ids, config=FAST).median_ms > 0
