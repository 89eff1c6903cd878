"""The latency predictor's cost tables give what walking its kernel template gives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_nets import make_tiny_net

import protege.estimators._kernel_costs as kc
import protege.estimators._latency_predictor as ortp
from protege.estimators import LatencyPredictor, LatencyStats
from protege.estimators._kernels import profile_kernels
from protege.spaces import derive

X = torch.randn(1, 1, 8, 8)


@pytest.fixture(scope="module")
def level3(tmp_path_factory):
    """Space and onnxruntime predictor of the tiny net at level 3: widths, depths, ranks,
    and reorders that two width choices share (exact fake calibration timings)."""

    def timed(model, example, *, runtime, precision, batch_size, config):
        kernels = profile_kernels(model, example, runs=1, warmup=0)
        ms = 2 * sum(k.ms for k in kernels) + 0.01
        return LatencyStats(median_ms=ms, p10_ms=ms, p90_ms=ms, min_ms=ms, repeats=1, number=1,
                            threads=1)

    space = derive(make_tiny_net(), X, level=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ortp, "measure_latency_stats", timed)
        predictor = LatencyPredictor.for_space(
            space, X, runtime="onnxruntime", cache_dir=tmp_path_factory.mktemp("latency"),
            probes=2, calibration=3, runs=1)
    assert isinstance(predictor, LatencyPredictor)
    return space, predictor


def _walk(predictor: LatencyPredictor, arch) -> tuple[float, float, int, int]:
    """The template walked kernel by kernel: table hit, else the regression of the node
    (the prediction before the cost tables)."""
    template = predictor._template
    total, variance, misses = 0.0, 0.0, 0
    kernels = template.kernels(arch)
    for index, shapes in kernels:
        hit = predictor._fast.get((template.nodes[index].op, shapes))
        if hit is not None:
            total += hit
            continue
        misses += 1
        first = math.prod(shapes[0]) / 1e6 if shapes else 0.0
        last = math.prod(shapes[-1]) / 1e6 if shapes else 0.0
        row = np.asarray([1.0, first, last, first * last]) * predictor._coef[index]
        total += max(float(row.sum()), 0.0)
        variance += float(predictor._sd[index] ** 2)
    return total, variance, len(kernels), misses


def _archs(space, count=60, seed=5):
    rng = np.random.default_rng(seed)
    return [space.repair(space.sample(rng)) for _ in range(count)]


def test_cost_tables_predict_what_the_template_walk_predicts(level3):
    space, predictor = level3
    costs = predictor._costs
    seen = {"misses": 0, "reorders": 0, "dropped": 0, "ranked": 0}
    for arch in _archs(space):
        assert costs.active(arch)[1] == predictor._template.active(arch).tolist()
        total, variance, count, misses = costs.evaluate(arch)
        ref_total, ref_variance, ref_count, ref_misses = _walk(predictor, arch)
        assert (count, misses) == (ref_count, ref_misses)
        assert total == pytest.approx(ref_total, rel=1e-12)
        assert variance == pytest.approx(ref_variance, rel=1e-12, abs=1e-18)
        predictor.misses = 0
        assert predictor.predict_with_uncertainty(arch) == pytest.approx(
            predictor._calibrated(ref_total, ref_variance, ref_count), rel=1e-12)
        assert predictor.misses == ref_misses
        seen["misses"] += misses
        seen["reorders"] += any(predictor._template.nodes[i].name.startswith("Reorder")
                                for i, _ in predictor._template.kernels(arch))
        seen["dropped"] += not all(arch[c] for c in space.choices if c.startswith("depth."))
        seen["ranked"] += any(arch[c] < 1 for c in space.choices if c.startswith("rank."))
    # every part of the rule was exercised: regressions, shared reorders, depth, rank
    assert all(seen.values()), seen
    assert predictor._template.structural and predictor._template.misaligned


def test_kernels_with_too_many_combinations_are_costed_per_prediction(level3, monkeypatch):
    space, predictor = level3
    monkeypatch.setattr(kc, "MAX_COMBINATIONS", 1)
    apart = kc.KernelCosts(template=predictor._template, choices=space.choices,
                           costs=predictor._node_costs)
    assert apart._large and len(apart._ms) < len(predictor._costs._ms)
    for arch in _archs(space, count=20, seed=6):
        total, variance, count, misses = apart.evaluate(arch)
        ref_total, ref_variance, ref_count, ref_misses = _walk(predictor, arch)
        assert (count, misses) == (ref_count, ref_misses)
        assert total == pytest.approx(ref_total, rel=1e-12)
        assert variance == pytest.approx(ref_variance, rel=1e-12, abs=1e-18)


def test_cost_tables_refuse_an_option_the_space_lacks(level3):
    space, predictor = level3
    arch = space.largest()
    name = next(iter(space.choices))
    with pytest.raises(ValueError, match="not an option"):
        predictor.predict({**arch, name: 0.3})
