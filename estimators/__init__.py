"""Cost and quality of a student without training or timing it in full.

- :func:`count_macs` / :func:`count_macs_torch` / :func:`count_params`: exact counts;
- :func:`measure_latency` / :func:`measure_latency_stats`: measured CPU latency;
- :class:`LatencyPredictor`: per-layer lookup table + fitted correction, per machine;
- :class:`AccuracyPredictor`, :func:`extrapolate`, :func:`prob_dominated`: accuracy
  from an encoded architecture or a partial learning curve, and the pruning question
  "is this student likely to be dominated?".
"""

from protege.estimators._accuracy import AccuracyPredictor, extrapolate, prob_dominated
from protege.estimators._latency_predictor import LatencyPredictor, default_latency_cache
from protege.estimators._macs import THOP_RULES, count_macs, count_macs_torch, count_params
from protege.estimators._timing import (
    LatencyStats,
    TimingConfig,
    machine_fingerprint,
    measure_latency,
    measure_latency_stats,
)

__all__ = [
    "THOP_RULES",
    "AccuracyPredictor",
    "LatencyPredictor",
    "LatencyStats",
    "TimingConfig",
    "count_macs",
    "count_macs_torch",
    "count_params",
    "default_latency_cache",
    "extrapolate",
    "machine_fingerprint",
    "measure_latency",
    "measure_latency_stats",
    "prob_dominated",
]
