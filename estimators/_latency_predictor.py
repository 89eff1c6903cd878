"""Latency on ONNX Runtime (fp32 or int8) predicted from the architecture alone.

How a space's predictor is built (:meth:`LatencyPredictor.for_space`), once per machine:

1. **Kernels.** The teacher and a few probe students are exported and profiled on
   the runtime (:mod:`._kernels`): every kernel the runtime runs, with its fusions
   (conv + BatchNorm folded, + activation, + residual add), its shapes and its time.
   This is nn-Meter's kernel detection (Zhang et al., MobiSys 2021) read off the runtime.
2. **Template (shape propagation).** Each width choice is probed once at its smallest
   option: the channel dimensions it changes in every kernel's shapes, which scale with
   the channels it removes. Each structural choice (``depth.*``, ``rank.*``) is probed
   once per non-teacher option: the kernels it removes and those it adds. A student's
   kernel list and shapes then follow from its architecture by arithmetic, with no
   model built and no forward pass.
3. **Per-kernel table** (operator + shapes -> median ms over every profile), and for
   shapes the table lacks, a regression per kernel position on (input elements, output
   elements, their product), non-negative least squares: LitePred's per-kernel models
   (Feng et al., NSDI 2024) fitted on the positions of one network.
4. **Calibration** on ``calibration`` whole students timed with the quiet protocol
   (:mod:`._timing`): ``measured = a * (sum of kernels) + b``, non-negative; the
   leave-one-out relative error gives the uncertainty of every prediction and the
   :attr:`LatencyPredictor.calibration` report (how well a new machine was calibrated).
   As in HELP (Lee et al., NeurIPS 2021), a new device needs only a few measured
   samples to adapt.
5. **Cost tables** (:mod:`._kernel_costs`): every kernel's cost under every combination
   of the width options it depends on, computed once when the predictor is made, so a
   prediction is ``space.repair`` plus a few list look-ups (tens of microseconds).

Everything is cached on disk under the machine's fingerprint with the runtime,
precision, batch and threads, so a second build on one machine measures nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from protege.estimators._cache import cache_folder, merge_json, read_json
from protege.estimators._kernel_costs import KernelCosts
from protege.estimators._kernels import Kernel, Shapes, features, kernel_key, profile_kernels
from protege.estimators._runtime import check_settings, default_runtime
from protege.estimators._template import Template, build_template, kept, simd_block, value_key
from protege.estimators._timing import (
    TimingConfig,
    machine_id,
    measure_latency_stats,
)
from protege.estimators._torch_predictor import TorchLatencyPredictor

__all__ = ["LatencyPredictor"]

logger = logging.getLogger(__name__)


class _Space(Protocol):
    choices: Mapping[str, Any]
    example_input: torch.Tensor

    @property
    def groups(self) -> Mapping[str, Any]: ...

    def sample(self, rng: np.random.Generator) -> dict[str, Any]: ...

    def largest(self) -> dict[str, Any]: ...

    def repair(self, arch: Mapping[str, Any]) -> dict[str, Any]: ...

    def materialize(self, arch: Mapping[str, Any]) -> nn.Module: ...


def _fit_rows(rows: Sequence[tuple[tuple[float, ...], float]]) -> tuple[list[float], float]:
    """Non-negative least squares on relative errors; returns (coefficients, residual sd ms)."""
    design = np.asarray([r[0] for r in rows], dtype=float)
    target = np.asarray([r[1] for r in rows], dtype=float)
    weights = 1.0 / np.maximum(target, 1e-4)
    coef, _ = nnls(design * weights[:, None], target * weights)
    resid = design @ coef - target
    return coef.tolist(), float(np.sqrt(np.mean(resid ** 2))) if len(rows) > 1 else 0.0


class LatencyPredictor:
    """Predicts a student's latency (ms) on ONNX Runtime from its architecture.

    Build one with :meth:`for_space`. :meth:`predict` needs neither a model nor a
    forward pass (well under a millisecond); :meth:`predict_with_uncertainty` adds
    a standard deviation.

    Attributes:
        runtime: ``onnxruntime``.
        precision: ``fp32`` or ``int8``.
        batch_size: Batch of the predicted forward passes.
        threads: Intra-op threads.
        machine: :func:`machine_id` of the machine the table was measured on.
        table: Kernel key -> median ms.
        calibration: How the whole-student calibration went: ``students``, ``a``,
            ``b``, ``loo_mape`` (leave-one-out, %), ``loo_max`` (%), ``measured_ms``.
        measurements: Profiles and whole-student timings this instance ran (0 on a
            cache hit).
        build_s: Seconds :meth:`for_space` took.
        probes: How the kernels were profiled: ``profiled`` (models), ``one_choice``,
            ``random``, ``runs``.
        misses: Kernels predicted by a regression (shape not in the table) since creation.
    """

    def __init__(self, *, space: _Space | None, state: Mapping[str, Any], measurements: int = 0,
                 build_s: float = 0.0) -> None:
        self.space = space
        self.runtime = str(state["runtime"])
        self.precision = str(state["precision"])
        self.batch_size = int(state["batch_size"])
        self.threads = int(state["threads"])
        self.machine = str(state["machine"])
        self.table: dict[str, float] = {kernel_key(op, _as_shapes(shapes)): float(ms)
                                        for op, shapes, ms in state["kernels"]}
        self.calibration: dict[str, Any] = dict(state["calibration"])
        self.measurements = measurements
        self.build_s = build_s
        self.misses = 0
        self.probes: dict[str, Any] = dict(state["probes"])
        self._template = Template(state["template"])
        by_position = {k: (list(v[0]), float(v[1])) for k, v in state["positions"].items()}
        by_op = {k: (list(v[0]), float(v[1])) for k, v in state["ops"].items()}
        self._fast = {(op, _as_shapes(shapes)): float(ms) for op, shapes, ms in state["kernels"]}
        fallback = [by_position.get(node.name) or by_op.get(node.op) or by_op["*"]
                    for node in self._template.nodes]
        self._coef = np.asarray([f[0] for f in fallback], dtype=float).reshape(-1, 4)
        self._sd = np.asarray([f[1] for f in fallback], dtype=float)
        self._costs = (None if space is None else
                       KernelCosts(template=self._template, choices=space.choices,
                                   costs=self._node_costs))

    @classmethod
    def for_space(
        cls,
        space: _Space,
        example_input: torch.Tensor,
        *,
        runtime: str | None = None,
        precision: str = "fp32",
        batch_size: int = 1,
        threads: int = 1,
        cache_dir: str | Path | None = None,
        timing: TimingConfig | None = None,
        probes: int = 8,
        calibration: int = 8,
        runs: int = 10,
        seed: int = 0,
    ) -> LatencyPredictor | TorchLatencyPredictor:
        """Build (or load from the cache) the latency predictor of ``space``.

        Args:
            space: A search space (``choices``, ``groups``, ``sample``, ``largest``,
                ``repair``, ``materialize``).
            example_input: One batch the teacher accepts.
            runtime: ``onnxruntime`` (default where installed) or ``torch`` (eager; the
                per-layer predictor of :class:`TorchLatencyPredictor`).
            precision: ``fp32`` or ``int8`` (onnxruntime's static quantisation).
            batch_size: Batch of the predicted forward passes.
            threads: Intra-op threads of the runtime.
            cache_dir: Root of the latency cache (default :func:`default_latency_cache`).
            timing: The protocol of the whole-student calibration timings (its
                ``threads`` is replaced by ``threads``).
            probes: Random students profiled besides the teacher and the one-choice probes.
            calibration: Whole students timed for the calibration (at most 20 needed).
            runs: Profiled runs per probe (kernel times are their medians).
            seed: Seed of the random probes.

        Raises:
            ValueError: For unknown settings, int8 on torch.
            ImportError: For onnxruntime when onnx or onnxruntime is missing.
        """
        runtime = runtime or default_runtime()
        check_settings(runtime, precision, batch_size, threads)
        # one thread count for the profiles, the timings and the cache's fingerprint
        timing = dataclasses.replace(timing or TimingConfig(), threads=threads)
        if runtime == "torch":
            return TorchLatencyPredictor.for_space(
                space, example_input, cache_dir=cache_dir, batch_size=batch_size,
                timing=timing, seed=seed, probes=probes, calibration=calibration)
        start = time.perf_counter()
        folder = cache_folder(cache_dir, threads=threads, batch_size=batch_size,
                              runtime=runtime, precision=precision)
        path = folder / f"ort-{_space_id(space, example_input, probes, calibration, seed)}.json"
        stored = read_json(path)
        if stored.get("state"):
            return cls(space=space, state=stored["state"], build_s=time.perf_counter() - start)
        state, measurements = _build_state(
            space, example_input, precision=precision, batch_size=batch_size, threads=threads,
            timing=timing, probes=probes, calibration=calibration, runs=runs, seed=seed)
        merge_json(path, {"state": state})
        predictor = cls(space=space, state=state, measurements=measurements,
                        build_s=time.perf_counter() - start)
        logger.info("latency predictor (%s %s batch %d): %d kernels in the table, calibrated "
                    "on %d students, leave-one-out error %.1f%%", runtime, precision, batch_size,
                    len(predictor.table), state["calibration"]["students"],
                    state["calibration"]["loo_mape"])
        return predictor

    # -- prediction --------------------------------------------------------------------

    def _calibrated(self, total: float, variance: float, count: int) -> tuple[float, float]:
        a, b = float(self.calibration["a"]), float(self.calibration["b"])
        mean = a * total + b + float(self.calibration.get("c", 0.0)) * count
        rel = float(self.calibration["loo_rms"]) / 100
        return mean, math.sqrt((rel * mean) ** 2 + a * a * variance)

    def predict_with_uncertainty(self, arch: Mapping[str, Any]) -> tuple[float, float]:
        """Predicted milliseconds of the student ``arch`` and their standard deviation.

        The deviation combines the calibration's leave-one-out error (relative) with
        the residual spread of the regressions used for kernels the table lacks.

        Raises:
            ValueError: If this predictor has no space, or ``arch`` does not fit it.
        """
        return self._calibrated(*self._kernel_sum(arch))

    def _kernel_sum(self, arch: Mapping[str, Any]) -> tuple[float, float, int]:
        """(sum of kernel ms, its variance in ms², number of kernels) of ``arch``, uncalibrated."""
        if self.space is None or self._costs is None:
            raise ValueError("this predictor has no space to predict an architecture of")
        total, variance, count, misses = self._costs.evaluate(self.space.repair(arch))
        self.misses += misses
        return total, variance, count

    def _node_costs(self, index: int, shapes: Sequence[Shapes]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Costs of template node ``index`` under each of ``shapes``: (ms, variance ms²,
        whether the table lacked the shapes), three arrays of ``len(shapes)``.

        The table's median where it has the operator and shapes; else the regression of
        the node's position (or of its operator) on :func:`features`, never negative,
        with the regression's residual variance.
        """
        op = self._template.nodes[index].op
        hits = [self._fast.get((op, s)) for s in shapes]
        missed = np.asarray([hit is None for hit in hits], dtype=bool)
        ms = np.asarray([0.0 if hit is None else hit for hit in hits], dtype=float)
        if missed.any():
            gaps = [s for s, hit in zip(shapes, hits, strict=True) if hit is None]
            first = np.asarray([math.prod(s[0]) if s else 0 for s in gaps], dtype=float) / 1e6
            last = np.asarray([math.prod(s[-1]) if s else 0 for s in gaps], dtype=float) / 1e6
            design = np.column_stack([np.ones(len(gaps)), first, last, first * last])
            ms[missed] = np.maximum((design * self._coef[index]).sum(axis=1), 0.0)
        variance = np.where(missed, self._sd[index] ** 2, 0.0)
        return ms, variance, missed

    def predict(self, arch: Mapping[str, Any]) -> float:
        """Predicted milliseconds of the student ``arch`` (no model built, no forward pass)."""
        return self.predict_with_uncertainty(arch)[0]

    def record(self) -> dict[str, Any]:
        """Runtime, precision, batch, threads, machine and calibration: what a figure needs."""
        return {"runtime": self.runtime, "precision": self.precision,
                "batch_size": self.batch_size, "threads": self.threads,
                "machine": self.machine, "calibration": dict(self.calibration)}


def _as_shapes(shapes: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(d) for d in shape) for shape in shapes)


def _space_id(space: _Space, example_input: torch.Tensor, probes: int, calibration: int,
              seed: int) -> str:
    """Names a space by its choices, its teacher's structure and the build settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: list(v) for k, v in space.choices.items()}, default=str,
                             sort_keys=True).encode())
    digest.update(str(space.materialize(space.largest())).encode())
    digest.update(f"{tuple(example_input.shape)}|{probes}|{calibration}|{seed}|v2".encode())
    return digest.hexdigest()[:16]


def _probe_plan(space: _Space) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str],
                                                                        dict[str, Any]]]:
    """One-choice probes: each width choice at its smallest option; each structural
    choice at each option the teacher does not take."""
    teacher = space.largest()
    width: dict[str, dict[str, Any]] = {}
    structural: dict[tuple[str, str], dict[str, Any]] = {}
    for name, options in space.choices.items():
        if name.startswith("width."):
            if min(options) < teacher[name]:
                width[name] = {**teacher, name: min(options)}
            continue
        for value in options:
            if value != teacher[name]:
                structural[(name, value_key(value))] = space.repair({**teacher, name: value})
    return width, structural


def _build_state(space: _Space, example_input: torch.Tensor, *, precision: str, batch_size: int,
                 threads: int, timing: TimingConfig, probes: int, calibration: int, runs: int,
                 seed: int) -> tuple[dict[str, Any], int]:
    def profile(arch: Mapping[str, Any]) -> list[Kernel]:
        return profile_kernels(space.materialize(arch), example_input, precision=precision,
                               batch_size=batch_size, threads=threads, runs=runs)

    teacher_arch = space.repair(space.largest())
    teacher = profile(teacher_arch)
    width_plan, structural_plan = _probe_plan(space)
    profiles: list[list[Kernel]] = [teacher]
    width: dict[str, tuple[list[Kernel], int, int]] = {}
    for name, arch in width_plan.items():
        kernels = profile(arch)
        profiles.append(kernels)
        channels = int(space.groups[name].channels)
        width[name] = (kernels, channels, channels - kept(channels, float(arch[name])))
    structural = {}
    for key, arch in structural_plan.items():
        structural[key] = profile(arch)
        profiles.append(structural[key])
    template = build_template(teacher, width, structural, block=simd_block())
    rng = np.random.default_rng(seed)
    randoms = [space.repair(space.sample(rng)) for _ in range(probes)]
    for arch in randoms:
        profiles.append(profile(arch))

    observed: dict[tuple[str, tuple[tuple[int, ...], ...]], list[float]] = {}
    by_name: dict[str, list[tuple[tuple[float, ...], float]]] = {}
    by_op: dict[str, list[tuple[tuple[float, ...], float]]] = {"*": []}
    for kernels in profiles:
        for k in kernels:
            observed.setdefault((k.op, k.shapes), []).append(k.ms)
            row = (features(k.shapes), k.ms)
            by_name.setdefault(k.name, []).append(row)
            by_op.setdefault(k.op, []).append(row)
            by_op["*"].append(row)
    kernels = [[op, [list(s) for s in shapes], float(np.median(values))]
               for (op, shapes), values in observed.items()]
    positions = {name: _fit_rows(rows) for name, rows in by_name.items()
                 if len({r[0] for r in rows}) >= 3}
    ops = {op: _fit_rows(rows) for op, rows in by_op.items() if rows}
    if not ops.get("*"):
        ops["*"] = ([0.0, 0.0, 0.0, 0.0], 0.0)
    state: dict[str, Any] = {
        "runtime": "onnxruntime", "precision": precision, "batch_size": batch_size,
        "threads": threads, "machine": machine_id(), "template": template, "kernels": kernels,
        "positions": positions, "ops": ops,
        "calibration": {"a": 1.0, "b": 0.0, "c": 0.0, "loo_rms": 0.0},
        "probes": {"profiled": len(profiles), "one_choice": len(width_plan) + len(structural_plan),
                   "random": probes, "runs": runs},
    }
    count = max(2, min(calibration, 20))
    chosen = ([teacher_arch] + randoms)[:count]
    chosen += [space.repair(space.sample(rng)) for _ in range(count - len(chosen))]
    state["calibration"] = _calibrate(LatencyPredictor(space=space, state=state), chosen,
                                      example_input, timing)
    return state, len(profiles) + len(chosen)


def _calibrate(predictor: LatencyPredictor, archs: Sequence[Mapping[str, Any]],
               example_input: torch.Tensor, timing: TimingConfig) -> dict[str, Any]:
    """Fit ``measured = a * kernel_sum + b`` on whole students, with leave-one-out errors."""
    assert predictor.space is not None
    sums, counts, measured, spreads = [], [], [], []
    for arch in archs:
        total, _, count = predictor._kernel_sum(arch)
        sums.append(total)
        counts.append(count)
        stats = measure_latency_stats(predictor.space.materialize(arch), example_input,
                                      runtime="onnxruntime", precision=predictor.precision,
                                      batch_size=predictor.batch_size, config=timing)
        if not stats.usable:
            logger.warning("calibration student measured with %.0f%% repeatability",
                           100 * stats.repeatability)
        measured.append(stats.ms)
        spreads.append(stats.repeatability)
    x, y = np.asarray(sums), np.asarray(measured)
    # kernel count: the runtime's per-kernel dispatch, which the profiler's node times
    # leave out (it matters for networks of tens of microseconds)
    design = np.column_stack([x, np.ones(len(x)), np.asarray(counts, dtype=float)])

    def fit(idx: np.ndarray) -> np.ndarray:
        coef, _ = nnls(design[idx] / y[idx, None], np.ones(len(idx)))
        return np.asarray(coef)

    coef = fit(np.arange(len(x)))
    errors = []
    for i in range(len(x)):
        rest = np.asarray([j for j in range(len(x)) if j != i])
        errors.append((float(design[i] @ fit(rest)) - y[i]) / y[i])
    err = np.abs(np.asarray(errors)) * 100
    a, b, c = (float(v) for v in coef)
    return {"students": len(x), "a": a, "b": b, "c": c, "loo_mape": float(err.mean()),
            "loo_max": float(err.max()), "loo_rms": float(np.sqrt(np.mean(err ** 2))),
            "measured_ms": y.tolist(), "kernel_sum_ms": x.tolist(), "kernels": counts,
            "repeatability": [float(s) for s in spreads]}
