"""PyTorch-eager latency predicted from a per-layer lookup table plus a fitted correction.

The ``runtime="torch"`` path of :meth:`LatencyPredictor.for_space`; the deployment
runtime (onnxruntime) has its own predictor in :mod:`._latency_predictor`.

The table maps each distinct leaf-layer configuration (type, hyper-parameters, input
shapes) to its measured latency on this machine. It lives on disk under a machine
fingerprint (CPU model, threads, batch size, torch version), is shared by every space
and worker on the machine, and grows by merging: concurrent writers lock, re-read and
replace the file atomically. A student's prediction walks its leaf-layer calls, sums
their table entries, and maps that sum through a small non-negative linear correction
(fitted once per space on a few measured students) that absorbs what isolated layers
miss: Python dispatch per call, residual adds and reshapes, cache effects.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from protege.common import eval_mode
from protege.estimators._cache import cache_folder, merge_json, read_json
from protege.estimators._timing import (
    TimingConfig,
    measure_latency_stats,
    time_callable,
    torch_threads,
)
from protege.estimators._trace import LayerCall, LayerTrace, trace

__all__ = ["TorchLatencyPredictor"]

logger = logging.getLogger(__name__)

_TABLE = "layers.json"


class _Space(Protocol):
    choices: Mapping[str, Any]

    def sample(self, rng: np.random.Generator) -> dict[str, Any]: ...

    def materialize(self, arch: Mapping[str, Any]) -> nn.Module: ...


def _features(lut_ms: float, tr: LayerTrace) -> np.ndarray:
    """Inputs of the correction: table sum, calls, outside ops, their Mi elements, 1."""
    return np.array([lut_ms, len(tr.calls), tr.other_ops, tr.other_numel / 1e6, 1.0])


def _probe_archs(space: _Space, count: int, seed: int) -> list[dict[str, Any]]:
    """Uniform architectures (same option index everywhere), then random ones."""
    choices = {name: tuple(options) for name, options in space.choices.items()}
    longest = max((len(o) for o in choices.values()), default=1)
    archs = [{name: o[min(i, len(o) - 1)] for name, o in choices.items()} for i in range(longest)]
    rng = np.random.default_rng(seed)
    archs += [space.sample(rng) for _ in range(count)]
    return archs


@dataclass(frozen=True)
class _Fallback:
    """Least-squares ``ms ~ a + b*macs + c*io`` per layer kind, for unmeasured configs."""

    coef: dict[str, np.ndarray]

    @classmethod
    def fit(cls, table: Mapping[str, Mapping[str, float]]) -> _Fallback:
        by_kind: dict[str, list[tuple[float, float, float]]] = {}
        for entry in table.values():
            by_kind.setdefault(str(entry["kind"]), []).append(
                (float(entry["macs"]), float(entry["io"]), float(entry["ms"])))
        coef = {"*": cls._solve([row for rows in by_kind.values() for row in rows])}
        for kind, rows in by_kind.items():
            if len(rows) >= 4:
                coef[kind] = cls._solve(rows)
        return cls(coef)

    @staticmethod
    def _solve(rows: list[tuple[float, float, float]]) -> np.ndarray:
        if not rows:
            return np.zeros(3)
        data = np.asarray(rows, dtype=float)
        design = np.column_stack([np.ones(len(data)), data[:, 0] / 1e6, data[:, 1] / 1e6])
        solution, _ = nnls(design, data[:, 2])
        return np.asarray(solution)

    def __call__(self, call: LayerCall) -> float:
        a, b, c = self.coef.get(call.kind, self.coef["*"])
        return float(a + b * call.macs / 1e6 + c * call.io_numel / 1e6)


class TorchLatencyPredictor:
    """Predicts a student's PyTorch-eager CPU latency (ms) without timing the student.

    Build one per space with :meth:`for_space`; it is cheap to rebuild, since the
    table and correction come from the disk cache after the first build on a machine.

    Attributes:
        table: Layer key -> ``{"ms", "kind", "macs", "io"}``.
        coef: Correction weights on (table sum, calls, outside ops, outside Mi
            elements, 1).
        measurements: Layer configurations timed by this instance (0 on a cache hit).
        misses: Layer calls predicted by the fallback regression since creation.
    """

    def __init__(
        self,
        *,
        space: _Space | None,
        example_input: torch.Tensor,
        table: Mapping[str, Mapping[str, Any]],
        coef: np.ndarray,
        batch_size: int = 1,
        measurements: int = 0,
        table_path: Path | None = None,
        timing: TimingConfig | None = None,
    ) -> None:
        self.space = space
        self.table_path = table_path
        self.timing = timing or TimingConfig()
        self.batch_size = batch_size
        self._example = example_input[:1].detach().cpu().expand(
            batch_size, *example_input.shape[1:]).contiguous()
        self.table = {key: dict(entry) for key, entry in table.items()}
        self.coef = np.asarray(coef, dtype=float)
        self.measurements = measurements
        self.misses = 0
        self._fallback = _Fallback.fit(self.table)

    @classmethod
    def for_space(
        cls,
        space: _Space,
        example_input: torch.Tensor,
        *,
        cache_dir: str | Path | None = None,
        batch_size: int = 1,
        timing: TimingConfig | None = None,
        probes: int = 64,
        calibration: int = 16,
        seed: int = 0,
    ) -> TorchLatencyPredictor:
        """Build (or load) the latency table of ``space`` and fit the correction.

        Probe students (every uniform width and ``probes`` random ones) are
        materialised and their distinct leaf-layer configurations not yet in the
        table are timed in isolation. Then ``calibration`` of the probes are timed
        whole and the correction is fitted. Both results are cached on disk, so
        a second call on this machine times nothing.

        Args:
            space: A search space (``choices``, ``sample``, ``materialize``).
            example_input: One batch the teacher accepts.
            cache_dir: Root of the latency cache (default :func:`default_latency_cache`).
            batch_size: Batch of the predicted forward passes.
            timing: How layers and calibration students are timed.
            probes: Random probe students whose layers go into the table.
            calibration: Probe students timed whole to fit the correction.
            seed: Seed of the probe sampling.
        """
        timing = timing or TimingConfig()
        folder = cache_folder(cache_dir, threads=timing.threads, batch_size=batch_size,
                              runtime="torch")
        table_path = folder / _TABLE
        table = read_json(table_path)
        predictor = cls(space=space, example_input=example_input, table=table,
                        coef=np.array([1.0, 0, 0, 0, 0]), batch_size=batch_size,
                        table_path=table_path, timing=timing)
        archs = _probe_archs(space, probes, seed)
        traces: list[LayerTrace] = []
        new: dict[str, dict[str, Any]] = {}
        for arch in archs:
            tr = trace(space.materialize(arch), predictor._example, keep_modules=True)
            traces.append(tr)
            for call in tr.calls:
                if call.key not in table and call.key not in new:
                    new[call.key] = {"ms": _time_layer(call, timing), "kind": call.kind,
                                     "macs": call.macs, "io": call.io_numel}
        if new:
            table = merge_json(table_path, new)
            logger.info("latency table %s: measured %d new layer configurations (%d in all)",
                        table_path, len(new), len(table))
        predictor.table = {key: dict(entry) for key, entry in table.items()}
        predictor.measurements = len(new)
        predictor._fallback = _Fallback.fit(predictor.table)

        ident = _space_id(archs, traces)
        corr_path = folder / f"correction-{ident}.json"
        stored = read_json(corr_path)
        if stored.get("coef") and not new:
            predictor.coef = np.asarray(stored["coef"], dtype=float)
        else:
            chosen = list(range(min(calibration, len(archs))))
            features = [_features(predictor._lut_ms(traces[i]), traces[i]) for i in chosen]
            measured = [measure_latency_stats(space.materialize(archs[i]), predictor._example,
                                              runtime="torch", batch_size=batch_size,
                                              config=timing).ms
                        for i in chosen]
            predictor.coef = fit_correction(np.asarray(features), np.asarray(measured))
            predictor.measurements += len(chosen)
            merge_json(corr_path, {"coef": predictor.coef.tolist(), "measured": measured})
        return predictor

    def _lut_ms(self, tr: LayerTrace) -> float:
        total = 0.0
        for call in tr.calls:
            entry = self.table.get(call.key)
            if entry is None:
                self.misses += 1
                total += self._fallback(call)
            else:
                total += float(entry["ms"])
        return total

    def predict_trace(self, tr: LayerTrace) -> float:
        """Predicted milliseconds of a traced student."""
        return max(float(_features(self._lut_ms(tr), tr) @ self.coef), 0.0)

    def predict_model(self, model: nn.Module) -> float:
        """Predicted milliseconds of a built student (it is not timed).

        One untimed single-thread forward pass on the example batch lists the
        student's layer calls and shapes (on the meta device it would cost more:
        meta kernels dispatch slowly in Python).
        """
        with torch_threads(1), eval_mode(model):
            return self.predict_trace(trace(model, self._example, keep_modules=False))

    def predict(self, arch: Mapping[str, Any]) -> float:
        """Predicted milliseconds of the student ``arch`` describes (materialised, not timed)."""
        if self.space is None:
            raise ValueError("this predictor has no space; use predict_model")
        return self.predict_model(self.space.materialize(arch))

    def extend(self, model: nn.Module) -> int:
        """Time the layer configurations of ``model`` the table lacks, and save them.

        A worker that meets a student whose layers miss the table (the fallback
        regression covers them meanwhile) can call this to improve later predictions;
        it times single layers only. The correction is not refitted.

        Returns:
            The number of configurations timed.
        """
        with torch_threads(1), eval_mode(model):
            tr = trace(model, self._example, keep_modules=True)
        new: dict[str, dict[str, Any]] = {}
        for call in tr.calls:
            if call.key not in self.table and call.key not in new:
                new[call.key] = {"ms": _time_layer(call, self.timing), "kind": call.kind,
                                 "macs": call.macs, "io": call.io_numel}
        if new:
            merged = merge_json(self.table_path, new) if self.table_path else new
            self.table.update({key: dict(entry) for key, entry in merged.items()})
            self.measurements += len(new)
        return len(new)


def fit_correction(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Non-negative least squares of measured ms on the correction features.

    Relative errors matter, so rows are weighted by ``1 / measured``.
    """
    weights = 1.0 / np.maximum(measured, 1e-6)
    solution, _ = nnls(features * weights[:, None], measured * weights)
    return np.asarray(solution)


def _time_layer(call: LayerCall, timing: TimingConfig) -> float:
    """Milliseconds of one leaf layer on inputs of its traced shapes and dtypes.

    Floating-point inputs are random; integer ones are zeros (a valid index for any
    embedding or gather).
    """
    assert call.module is not None
    module = copy.deepcopy(call.module).eval()
    dtypes = call.dtypes or (torch.float32,) * len(call.shapes)
    inputs = [torch.randn(shape, dtype=dtype) if dtype.is_floating_point
              else torch.zeros(shape, dtype=dtype)
              for shape, dtype in zip(call.shapes, dtypes, strict=True)]
    return time_callable(lambda: module(*inputs), timing).median_ms


def _space_id(archs: list[dict[str, Any]], traces: list[LayerTrace]) -> str:
    """Names a space by its probe students' layer keys, so a changed space refits."""
    digest = hashlib.sha256()
    for arch, tr in zip(archs, traces, strict=True):
        digest.update(json.dumps(arch, sort_keys=True, default=str).encode())
        digest.update("|".join(call.key for call in tr.calls).encode())
    return digest.hexdigest()[:16]
