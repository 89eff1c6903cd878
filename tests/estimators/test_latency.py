from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import protege.estimators._torch_predictor as lp
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

    def time_student(model, example, *, batch_size, config, **settings):
        assert settings.get("runtime") == "torch"
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
    stats = measure_latency_stats(tiny_net, x, runtime="torch", batch_size=2, config=FAST)
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.spread >= 0 and stats.threads == 1 and stats.repeats == 3 * FAST.blocks
    assert stats.ms == stats.min_of_medians_ms and stats.repeatability >= 0
    assert (stats.runtime, stats.precision, stats.batch_size) == ("torch", "fp32", 2)
    assert stats.machine
    assert measure_latency(tiny_net, x, runtime="torch", warmup=0, repeats=2,
                           max_spread=1e9) > 0
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
    first = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), runtime="torch",
                                       cache_dir=tmp_path,
                                       timing=FAST, probes=3, calibration=5)
    layers, students = counted["layers"], counted["students"]
    assert layers == len(first.table) > 0 and students == 5
    assert first.measurements == layers + students
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert set(json.loads((folder / "layers.json").read_text())) == set(first.table)

    second = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), runtime="torch",
                                       cache_dir=tmp_path,
                                        timing=FAST, probes=3, calibration=5)
    assert counted == {"layers": layers, "students": students}  # nothing timed again
    assert second.measurements == 0
    arch = space.sample(np.random.default_rng(99))
    assert second.predict(arch) == first.predict(arch)


def test_prediction_follows_the_correction(space, counted, tmp_path):
    predictor = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), runtime="torch",
                                       cache_dir=tmp_path,
                                           timing=FAST, probes=3, calibration=6)
    for seed in range(3):
        arch = space.sample(np.random.default_rng(seed + 100))
        student = space.materialize(arch)
        calls = len(trace(student, torch.randn(1, 1, 8, 8), keep_modules=False).calls)
        assert predictor.predict(arch) == pytest.approx(LAYER_MS * calls + FORWARD_MS, rel=0.05)


def test_unmeasured_layers_fall_back_to_a_regression(space, counted, tmp_path):
    predictor = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), runtime="torch",
                                       cache_dir=tmp_path,
                                           timing=FAST, probes=0, calibration=3)
    predictor.table = {k: v for i, (k, v) in enumerate(predictor.table.items()) if i % 2}
    predictor.misses = 0
    assert predictor.predict(space.smallest()) > 0
    assert predictor.misses > 0


def test_extend_times_only_missing_layers_and_saves_them(space, counted, tmp_path):
    predictor = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), runtime="torch",
                                       cache_dir=tmp_path,
                                           timing=FAST, probes=0, calibration=3)
    student = space.materialize(space.sample(np.random.default_rng(5)))
    before = counted["layers"]
    timed = predictor.extend(student)
    assert counted["layers"] - before == timed
    assert predictor.extend(student) == 0
    saved = json.loads(predictor.table_path.read_text())
    assert set(saved) == set(predictor.table)


def test_threads_name_the_timings_and_the_cache(space, counted, tmp_path):
    """``threads`` is the thread count of the timings too, so the cache's fingerprint
    names the threads the figures were taken with."""
    import dataclasses

    predictor = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), runtime="torch",
                                           cache_dir=tmp_path, threads=1, probes=0,
                                           calibration=3,
                                           timing=dataclasses.replace(FAST, threads=2))
    assert predictor.timing.threads == 1
    assert predictor.table_path.parent.name == machine_fingerprint(threads=1, runtime="torch")


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
    assert measure_latency_stats(_Tokens(), ids, runtime="torch", config=FAST).median_ms > 0


# -- deployment runtime: onnxruntime fp32 / int8 ------------------------------------------

pytest.importorskip("onnxruntime")

from protege.estimators import default_runtime  # noqa: E402
from protege.estimators._kernels import parse_profile, profile_kernels  # noqa: E402
from protege.estimators._timing import time_callable  # noqa: E402


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnxruntime_measurement_names_its_settings(tiny_net, precision):
    stats = measure_latency_stats(tiny_net, torch.randn(1, 1, 8, 8), runtime="onnxruntime",
                                  precision=precision, batch_size=3, config=FAST)
    assert stats.ms > 0 and stats.repeatability >= 0
    record = stats.to_dict()
    assert (record["runtime"], record["precision"], record["batch_size"], record["threads"]) == (
        "onnxruntime", precision, 3, 1)
    assert record["machine"] and "usable" in record
    assert default_runtime() == "onnxruntime"


def test_int8_latency_of_a_network_fed_integer_ids():
    """The int8 calibration keeps token ids integers (noise made them floats, which the
    exported model's int64 input refused)."""
    stats = measure_latency_stats(_Tokens(), torch.randint(0, 50, (1, 6)), runtime="onnxruntime",
                                  precision="int8", config=FAST)
    assert stats.ms > 0 and stats.precision == "int8"


def test_bad_settings_are_refused(tiny_net):
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="runtime"):
        measure_latency(tiny_net, x, runtime="tensorrt")
    with pytest.raises(ValueError, match="int8"):
        measure_latency(tiny_net, x, runtime="torch", precision="int8")
    with pytest.raises(ValueError, match="precision"):
        measure_latency(tiny_net, x, precision="fp16")


def test_a_noisy_measurement_is_not_passed_as_a_number(tiny_net, monkeypatch, caplog):
    import protege.estimators._timing as timing

    def noisy(fn, config):
        stats = time_callable(fn, dataclasses_replace(config, warmup=0, repeats=1, blocks=1))
        return dataclasses_replace(stats, repeatability=0.9, usable=False)

    monkeypatch.setattr(timing, "time_callable", noisy)
    value = measure_latency(tiny_net, torch.randn(1, 1, 8, 8), runtime="torch", attempts=2)
    assert np.isnan(value)
    assert "not measurable" in caplog.text


def test_a_remeasurement_reuses_the_exported_model(tiny_net, monkeypatch):
    """Each attempt times the same session: one export and one int8 quantisation."""
    import protege.estimators._runtime as runtime
    import protege.estimators._timing as timing

    exports = []

    def noisy(fn, config):
        stats = time_callable(fn, dataclasses_replace(config, warmup=0, repeats=1, blocks=1))
        return dataclasses_replace(stats, repeatability=0.9, usable=False)

    def counted(*args, **kwargs):
        exports.append(kwargs["precision"])
        return onnx_model_file(*args, **kwargs)

    onnx_model_file = runtime.onnx_model_file
    monkeypatch.setattr(timing, "time_callable", noisy)
    monkeypatch.setattr(runtime, "onnx_model_file", counted)
    value = measure_latency(tiny_net, torch.randn(1, 1, 8, 8), runtime="onnxruntime",
                            precision="int8", attempts=3)
    assert np.isnan(value) and exports == ["int8"]


def dataclasses_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_the_blocks_give_the_figure_and_its_repeatability():
    calls = iter([1.0] * 1000)
    config = TimingConfig(warmup=0, repeats=3, blocks=4, min_repeat_ms=0.0, max_spread=0.5)
    stats = time_callable(lambda: next(calls), config)
    assert stats.repeats == 12 and stats.number == 1
    assert stats.ms == stats.min_of_medians_ms <= stats.median_ms
    assert stats.usable == (stats.repeatability <= 0.5)


def test_profile_lists_fused_kernels(tiny_net):
    kernels = profile_kernels(tiny_net, torch.randn(1, 1, 8, 8), runs=2, warmup=1)
    ops = [k.op for k in kernels]
    assert "BatchNormalization" not in ops  # folded into the convolutions at export
    assert any(op in ("Conv", "FusedConv") for op in ops)
    assert all(k.ms >= 0 and k.shapes for k in kernels)


def test_parse_profile_keeps_medians_after_warmup():
    def event(dur):
        return {"cat": "Node", "name": "/c/Conv_kernel_time", "dur": dur,
                "args": {"op_name": "Conv", "input_type_shape": [{"float": [1, 2]}, {"float": []}],
                         "output_type_shape": [{"float": [1, 3]}]}}

    (kernel,) = parse_profile([event(1000), event(10), event(20), event(30),
                               {"cat": "Session", "name": "model_run"}], skip_runs=1)
    assert kernel.name == "/c/Conv" and kernel.op == "Conv"
    assert kernel.shapes == ((1, 2), (1, 3)) and kernel.ms == pytest.approx(0.02)


@pytest.fixture
def ort_predictor(space, tmp_path, monkeypatch):
    """An onnxruntime predictor whose calibration timings are exact: 2 x kernel sum + 0.01."""
    import protege.estimators._latency_predictor as ortp

    def timed(model, example, *, runtime, precision, batch_size, config):
        kernels = profile_kernels(model, example, precision=precision, batch_size=batch_size,
                                  runs=1, warmup=0)
        ms = 2 * sum(k.ms for k in kernels) + 0.01
        return _fake_stats(ms)

    monkeypatch.setattr(ortp, "measure_latency_stats", timed)
    return LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), runtime="onnxruntime",
                                      cache_dir=tmp_path, probes=2, calibration=4, runs=2)


def test_template_propagates_shapes_like_the_runtime(space, ort_predictor):
    """The kernels predicted from the architecture are those the runtime runs."""
    rng = np.random.default_rng(3)
    for _ in range(3):
        arch = space.repair(space.sample(rng))
        predicted = sorted((ort_predictor._template.nodes[i].op, shapes)
                           for i, shapes in ort_predictor._template.kernels(arch))
        actual = sorted((k.op, k.shapes) for k in profile_kernels(
            space.materialize(arch), torch.randn(1, 1, 8, 8), runs=1, warmup=0))
        # ONNX Runtime's NCHWc reorders for channel counts off its SIMD block are
        # modelled per group only approximately: compare the compute kernels
        assert ([op for op, _ in predicted if not op.startswith("Reorder")]
                == [op for op, _ in actual if not op.startswith("Reorder")])


def test_prediction_needs_no_model_and_carries_uncertainty(space, ort_predictor, monkeypatch):
    calibration = ort_predictor.calibration
    assert calibration["students"] == 4 == len(calibration["measured_ms"])
    assert calibration["a"] >= 0 and calibration["b"] >= 0 and calibration["loo_mape"] >= 0
    monkeypatch.setattr(space, "materialize", lambda *a, **k: pytest.fail("materialized"))
    mean, sd = ort_predictor.predict_with_uncertainty(space.sample(np.random.default_rng(0)))
    assert mean > 0 and sd >= 0
    record = ort_predictor.record()
    assert record["runtime"] == "onnxruntime" and record["precision"] == "fp32"
    assert record["batch_size"] == 1 and record["threads"] == 1 and record["machine"]


def test_onnxruntime_predictor_is_cached(space, ort_predictor, tmp_path, monkeypatch):
    import protege.estimators._latency_predictor as ortp

    monkeypatch.setattr(ortp, "profile_kernels", lambda *a, **k: pytest.fail("profiled"))
    again = LatencyPredictor.for_space(space, torch.randn(1, 1, 8, 8), runtime="onnxruntime",
                                       cache_dir=tmp_path, probes=2, calibration=4, runs=2)
    arch = space.sample(np.random.default_rng(1))
    assert again.measurements == 0
    assert again.predict(arch) == ort_predictor.predict(arch)


def test_latency_settings_resolve_the_runtime():
    from protege.estimators import LatencySettings

    settings = LatencySettings(precision="int8", batch_size=32).resolve()
    assert settings.runtime == "onnxruntime" and settings.to_dict()["batch_size"] == 32
    with pytest.raises(ValueError, match="int8"):
        LatencySettings(runtime="torch", precision="int8").resolve()
    with pytest.raises(TypeError):
        LatencySettings("torch")  # type: ignore[misc]
