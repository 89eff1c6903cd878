"""Measured latency on a deployment runtime, with its repeatability.

The protocol (as quiet as a shared CPU allows):

1. the model is prepared once for the runtime (:mod:`._runtime`): exported and
   optimised by ONNX Runtime (fp32 or static int8), or run eagerly by PyTorch;
2. intra-op threads are pinned (1 by default: least noisy, a single-core deployment);
3. warm-up calls (allocator, caches, oneDNN/MLAS primitive creation);
4. ``blocks`` blocks of ``repeats`` short repeats; one repeat runs the model ``number``
   times back to back (``number`` chosen so a repeat lasts ``min_repeat_ms``);
5. the figure is the *minimum of the block medians* (default) or the 20 % trimmed mean
   of all repeats: both discard the bursts other processes cause; which one repeats
   better on a loaded machine is measured in ``experiments/bench_estimators.py``;
6. the *repeatability* is the relative range of the block medians,
   ``(max - min) / figure``; a measurement whose repeatability exceeds ``max_spread``
   is marked unusable, and :func:`measure_latency` re-measures it and, if it stays
   noisy, returns NaN with a warning instead of passing noise as a number.

Every :class:`LatencyStats` names its runtime, precision, batch, threads and machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from protege.estimators._runtime import default_runtime, prepare_runner

__all__ = [
    "LatencyStats",
    "TimingConfig",
    "machine_fingerprint",
    "machine_id",
    "measure_latency",
    "measure_latency_stats",
    "time_callable",
]

logger = logging.getLogger(__name__)

STATISTICS = ("min_of_medians", "trimmed_mean")


@dataclass(frozen=True)
class TimingConfig:
    """How a latency is measured (see the module docstring for the protocol).

    Args:
        warmup: Calls before timing.
        repeats: Timed repeats per block.
        blocks: Blocks of repeats; their medians give the figure and its repeatability.
        min_repeat_ms: Shortest duration of one repeat (calls are batched to reach it).
        threads: Intra-op threads (torch: ``set_num_threads``, restored after;
            onnxruntime: the session's ``intra_op_num_threads``).
        statistic: ``min_of_medians`` or ``trimmed_mean``.
        max_spread: Largest repeatability (relative range of block medians) a usable
            measurement may have.
    """

    warmup: int = 10
    repeats: int = 7
    blocks: int = 5
    min_repeat_ms: float = 1.0
    threads: int = 1
    statistic: str = "min_of_medians"
    max_spread: float = 0.15

    def __post_init__(self) -> None:
        if (self.warmup < 0 or self.repeats < 1 or self.blocks < 1 or self.threads < 1
                or self.min_repeat_ms < 0 or self.max_spread <= 0):
            raise ValueError(f"invalid timing config {self}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {list(STATISTICS)}, got "
                             f"{self.statistic!r}")


@dataclass(frozen=True)
class LatencyStats:
    """One latency measurement, in milliseconds per forward pass, and how it was taken.

    Attributes:
        median_ms: Median over all repeats.
        p10_ms: 10th percentile of the repeats.
        p90_ms: 90th percentile of the repeats.
        min_ms: Fastest repeat.
        repeats: Number of repeats (all blocks).
        number: Calls averaged inside each repeat.
        threads: Intra-op threads used.
        ms: The figure to use (``statistic`` of the repeats).
        statistic: How ``ms`` was computed.
        trimmed_ms: 20 % trimmed mean of the repeats.
        min_of_medians_ms: Smallest block median.
        repeatability: Relative range of the block medians, ``(max - min) / ms``.
        usable: Whether ``repeatability <= max_spread`` of the config.
        runtime: ``onnxruntime`` or ``torch``.
        precision: ``fp32`` or ``int8``.
        batch_size: Batch of each forward pass.
        machine: :func:`machine_id` of the machine it was measured on.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    number: int
    threads: int
    ms: float = math.nan
    statistic: str = "median"
    trimmed_ms: float = math.nan
    min_of_medians_ms: float = math.nan
    repeatability: float = 0.0
    usable: bool = True
    runtime: str = "torch"
    precision: str = "fp32"
    batch_size: int = 1
    machine: str = ""

    def __post_init__(self) -> None:
        if math.isnan(self.ms):
            object.__setattr__(self, "ms", self.median_ms)

    @property
    def spread(self) -> float:
        """Relative spread ``(p90 - p10) / median`` of the single repeats."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-able data."""
        return dataclasses.asdict(self)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(threads)``, restoring the old count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _trimmed_mean(values: list[float], cut: float = 0.2) -> float:
    ordered = sorted(values)
    k = int(len(ordered) * cut)
    kept = ordered[k:len(ordered) - k] or ordered
    return statistics.fmean(kept)


def time_callable(fn: Callable[[], object], config: TimingConfig) -> LatencyStats:
    """Time ``fn()`` under ``config``'s protocol (torch threads pinned while timing).

    The record's runtime, precision, batch and machine fields are left at their
    defaults; :func:`measure_latency_stats` fills them in.
    """
    with torch_threads(config.threads), torch.no_grad():
        for _ in range(config.warmup):
            fn()
        start = time.perf_counter_ns()
        fn()
        once_ms = max((time.perf_counter_ns() - start) / 1e6, 1e-4)
        number = max(1, int(config.min_repeat_ms / once_ms + 0.999))
        blocks: list[list[float]] = []
        for _ in range(config.blocks):
            block = []
            for _ in range(config.repeats):
                start = time.perf_counter_ns()
                for _ in range(number):
                    fn()
                block.append((time.perf_counter_ns() - start) / 1e6 / number)
            blocks.append(block)
    samples = [s for block in blocks for s in block]
    medians = [statistics.median(block) for block in blocks]
    trimmed = _trimmed_mean(samples)
    figure = min(medians) if config.statistic == "min_of_medians" else trimmed
    repeatability = (max(medians) - min(medians)) / figure if figure > 0 else 0.0
    return LatencyStats(
        median_ms=statistics.median(samples), p10_ms=_quantile(samples, 0.1),
        p90_ms=_quantile(samples, 0.9), min_ms=min(samples), repeats=len(samples),
        number=number, threads=config.threads, ms=figure, statistic=config.statistic,
        trimmed_ms=trimmed, min_of_medians_ms=min(medians), repeatability=repeatability,
        usable=repeatability <= config.max_spread,
    )


def measure_latency_stats(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    runtime: str | None = None,
    precision: str = "fp32",
    batch_size: int = 1,
    threads: int | None = None,
    config: TimingConfig | None = None,
) -> LatencyStats:
    """Measure the latency of ``model`` on a runtime, with its repeatability.

    The model runs in eval mode under ``torch.no_grad`` (its modes are restored).

    Args:
        model: The network, on the CPU.
        example_input: One batch the model accepts; its first sample is repeated
            ``batch_size`` times.
        runtime: ``onnxruntime`` (default where installed) or ``torch`` (eager).
        precision: ``fp32`` or ``int8`` (onnxruntime's static quantisation).
        batch_size: Batch of the timed forward passes.
        threads: Intra-op threads; ``config.threads`` (1) when None.
        config: The protocol; :class:`TimingConfig` defaults when None.

    Returns:
        The measurement in milliseconds per forward pass; ``usable`` is False when its
        repeatability is above ``config.max_spread``.

    Raises:
        ValueError: For an unknown runtime or precision, int8 on torch, ``batch_size < 1``.
        TypeError: If ``example_input`` is not a batched tensor.
        ImportError: For onnxruntime when onnx or onnxruntime is missing.
    """
    config = config or TimingConfig()
    if threads is not None:
        config = dataclasses.replace(config, threads=threads)
    return _measured(model, example_input, runtime=runtime, precision=precision,
                     batch_size=batch_size, config=config, attempts=1)


def _measured(model: nn.Module, example_input: torch.Tensor, *, runtime: str | None,
              precision: str, batch_size: int, config: TimingConfig,
              attempts: int) -> LatencyStats:
    """Prepare ``model`` once (one export, one quantisation, one session) and time it up
    to ``attempts`` times, until a measurement is usable; the last one is returned."""
    runtime = runtime or default_runtime()
    # prepare_runner checks the settings and the input before it exports anything
    with prepare_runner(model, example_input, runtime=runtime, precision=precision,
                        batch_size=batch_size, threads=config.threads) as runner:
        for _ in range(max(1, attempts)):
            stats = time_callable(runner.run, config)
            if stats.usable:
                break
    stats = dataclasses.replace(stats, runtime=runtime, precision=precision,
                                batch_size=batch_size, machine=machine_id())
    logger.debug("latency %.4f ms on %s/%s batch %d (repeatability %.1f%%)", stats.ms, runtime,
                 precision, batch_size, 100 * stats.repeatability)
    return stats


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    runtime: str | None = None,
    precision: str = "fp32",
    batch_size: int = 1,
    threads: int | None = None,
    warmup: int = 10,
    repeats: int = 7,
    attempts: int = 3,
    max_spread: float = 0.15,
) -> float:
    """Latency of one forward pass of ``model`` on a runtime, in milliseconds.

    See :func:`measure_latency_stats` for the record with its repeatability. A
    measurement that does not repeat (``usable`` False) is taken again, up to
    ``attempts`` times; if none is usable the result is NaN and a warning names the
    spread, so noise never passes as a figure. The model is exported (and quantised) once
    for all attempts.

    Args:
        model: The network, on the CPU.
        example_input: One batch the model accepts.
        runtime: ``onnxruntime`` (default where installed) or ``torch``.
        precision: ``fp32`` or ``int8`` (onnxruntime only).
        batch_size: Batch of the timed forward passes.
        threads: Intra-op threads (1 when None).
        warmup: Untimed calls first.
        repeats: Timed repeats per block.
        attempts: Measurements tried before giving up on a noisy machine.
        max_spread: Largest usable repeatability (relative range of block medians).
    """
    config = TimingConfig(warmup=warmup, repeats=repeats, threads=threads or 1,
                          max_spread=max_spread)
    stats = _measured(model, example_input, runtime=runtime, precision=precision,
                      batch_size=batch_size, config=config, attempts=attempts)
    if stats.usable:
        return stats.ms
    logger.warning("latency not measurable here: block medians spread %.0f%% (> %.0f%%) in %d "
                   "attempts; is the machine busy?", 100 * stats.repeatability,
                   100 * config.max_spread, attempts)
    return math.nan


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@functools.cache
def _ort_version() -> str:
    try:
        import onnxruntime
    except ImportError:
        return "none"
    return str(onnxruntime.__version__)


@functools.cache
def machine_id() -> str:
    """A short stable name of this machine and its runtimes (CPU model, cores, torch,
    onnxruntime, platform): latency figures and tables are only valid where it matches."""
    parts = [_cpu_model(), f"cores={os.cpu_count()}", f"torch={torch.__version__}",
             f"onnxruntime={_ort_version()}", platform.machine(), platform.system()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def machine_fingerprint(*, threads: int = 1, batch_size: int = 1, runtime: str = "torch",
                        precision: str = "fp32") -> str:
    """:func:`machine_id` together with the settings a latency depends on."""
    parts = [machine_id(), f"threads={threads}", f"batch={batch_size}", f"runtime={runtime}",
             f"precision={precision}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
