"""Measured CPU latency: warm-up, a fixed thread count, the median of repeats and its spread."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from protege.common import eval_mode

__all__ = [
    "LatencyStats",
    "TimingConfig",
    "machine_fingerprint",
    "measure_latency",
    "measure_latency_stats",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimingConfig:
    """How a latency is measured.

    One *repeat* runs the callable ``number`` times back to back and records the mean;
    ``number`` is chosen once (after warm-up) so that a repeat lasts at least
    ``min_repeat_ms``, which keeps microsecond-scale layers above the timer's noise.

    Args:
        warmup: Calls before timing (allocator, caches, oneDNN primitive creation).
        repeats: Timed repeats; the median is reported.
        min_repeat_ms: Shortest duration of one repeat.
        threads: ``torch.set_num_threads`` during the measurement (restored after).
            One thread is the default: it is the least noisy on a shared machine
            and matches a single-core deployment; pass the target's count otherwise.
    """

    warmup: int = 10
    repeats: int = 15
    min_repeat_ms: float = 1.0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 1 or self.threads < 1 or self.min_repeat_ms < 0:
            raise ValueError(f"invalid timing config {self}")


@dataclass(frozen=True)
class LatencyStats:
    """One latency measurement, in milliseconds per call.

    Attributes:
        median_ms: Median over repeats: the value to use.
        p10_ms: 10th percentile of the repeats.
        p90_ms: 90th percentile of the repeats.
        min_ms: Fastest repeat.
        repeats: Number of repeats.
        number: Calls averaged inside each repeat.
        threads: Torch threads used.
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    repeats: int
    number: int
    threads: int

    @property
    def spread(self) -> float:
        """Relative spread ``(p90 - p10) / median``: the noise of this measurement."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0


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


def time_callable(fn: Callable[[], object], config: TimingConfig) -> LatencyStats:
    """Time ``fn()`` under ``config`` (threads are set by the caller or here)."""
    with torch_threads(config.threads), torch.no_grad():
        for _ in range(config.warmup):
            fn()
        start = time.perf_counter_ns()
        fn()
        once_ms = max((time.perf_counter_ns() - start) / 1e6, 1e-4)
        number = max(1, int(config.min_repeat_ms / once_ms + 0.999))
        samples = []
        for _ in range(config.repeats):
            start = time.perf_counter_ns()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter_ns() - start) / 1e6 / number)
    return LatencyStats(
        median_ms=statistics.median(samples),
        p10_ms=_quantile(samples, 0.1),
        p90_ms=_quantile(samples, 0.9),
        min_ms=min(samples),
        repeats=config.repeats,
        number=number,
        threads=config.threads,
    )


def _batch(example_input: torch.Tensor, batch_size: int) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise TypeError("example_input must be a batched tensor, e.g. shape (1, C, H, W)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    one = example_input[:1].detach().cpu()
    return one.expand(batch_size, *one.shape[1:]).contiguous()


def measure_latency_stats(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    batch_size: int = 1,
    config: TimingConfig | None = None,
) -> LatencyStats:
    """Measure the CPU latency of ``model`` on a batch, with its spread.

    The model runs in eval mode under ``torch.no_grad`` (its mode is restored).
    Timing is only meaningful on a quiet machine: run heavy jobs elsewhere.

    Args:
        model: The network, on the CPU.
        example_input: One batch the model accepts; its first sample is repeated
            ``batch_size`` times.
        batch_size: Batch of the timed forward passes.
        config: Warm-up, repeats and threads; :class:`TimingConfig` defaults when None.

    Returns:
        The measurement in milliseconds per forward pass.
    """
    config = config or TimingConfig()
    x = _batch(example_input, batch_size)
    with eval_mode(model):
        stats = time_callable(lambda: model(x), config)
    logger.debug("latency %.4f ms (spread %.1f%%)", stats.median_ms, 100 * stats.spread)
    return stats


def measure_latency(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    batch_size: int = 1,
    warmup: int = 10,
    repeats: int = 15,
    threads: int = 1,
) -> float:
    """Median CPU latency of one forward pass of ``model``, in milliseconds.

    See :func:`measure_latency_stats` for the spread.

    Args:
        model: The network, on the CPU.
        example_input: One batch the model accepts.
        batch_size: Batch of the timed forward passes.
        warmup: Untimed calls first.
        repeats: Timed repeats (each at least 1 ms long); the median is returned.
        threads: Torch threads while timing (restored afterwards).
    """
    config = TimingConfig(warmup=warmup, repeats=repeats, threads=threads)
    return measure_latency_stats(model, example_input, batch_size=batch_size,
                                 config=config).median_ms


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_fingerprint(*, threads: int = 1, batch_size: int = 1) -> str:
    """A short stable name for (CPU model, threads, batch, torch version, platform).

    Latency tables are only valid on the machine and settings they were measured with.
    """
    parts = [_cpu_model(), f"threads={threads}", f"batch={batch_size}",
             f"torch={torch.__version__}", platform.machine(), platform.system()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
