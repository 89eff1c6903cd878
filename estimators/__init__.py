"""Cost and quality of a student without training or timing it in full.

- :func:`count_macs` / :func:`count_macs_torch` / :func:`count_params`: exact counts;
- :func:`measure_latency` / :func:`measure_latency_stats`: latency measured on the
  deployment runtime (ONNX Runtime fp32 or int8, or PyTorch eager) with its repeatability;
  :func:`time_callable` is that protocol for any prepared call (an onnxruntime session);
- :func:`export_onnx_file` / :func:`quantize_int8_file` / :func:`ort_session`: the ONNX
  and static-int8 mechanics both the latency and ``protege.search``'s export use;
- :class:`LatencyPredictor`: that latency predicted from the architecture (per-kernel
  table on the runtime, shape propagation, calibrated on a few whole students);
- :class:`AccuracyPredictor`, :func:`extrapolate`, :func:`prob_dominated`: accuracy
  from an encoded architecture or a partial learning curve, and the pruning question
  "is this student likely to be dominated?".
"""

from protege.estimators._accuracy import AccuracyPredictor, extrapolate, prob_dominated
from protege.estimators._cache import default_latency_cache
from protege.estimators._latency_predictor import LatencyPredictor
from protege.estimators._macs import THOP_RULES, count_macs, count_macs_torch, count_params
from protege.estimators._runtime import (
    PRECISIONS,
    RUNTIMES,
    LatencySettings,
    default_runtime,
    export_onnx_file,
    float32_unless_integer,
    onnxruntime_module,
    ort_session,
    quantize_int8_file,
)
from protege.estimators._timing import (
    LatencyStats,
    TimingConfig,
    machine_fingerprint,
    machine_id,
    measure_latency,
    measure_latency_stats,
    time_callable,
)
from protege.estimators._torch_predictor import TorchLatencyPredictor

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "THOP_RULES",
    "AccuracyPredictor",
    "LatencyPredictor",
    "LatencySettings",
    "LatencyStats",
    "TimingConfig",
    "TorchLatencyPredictor",
    "count_macs",
    "count_macs_torch",
    "count_params",
    "default_latency_cache",
    "default_runtime",
    "export_onnx_file",
    "extrapolate",
    "float32_unless_integer",
    "machine_fingerprint",
    "machine_id",
    "measure_latency",
    "measure_latency_stats",
    "onnxruntime_module",
    "ort_session",
    "prob_dominated",
    "quantize_int8_file",
    "time_callable",
]
