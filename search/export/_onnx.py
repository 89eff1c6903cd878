"""Deployable students: ONNX and TorchScript files checked against PyTorch, and int8 ONNX.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``): with the
pinned torch (<= 2.14) it works offline with no ``onnxscript``, takes a fraction of a
second instead of about 3 s, and every file it writes is checked here against the
PyTorch outputs with onnxruntime anyway. Int8 is onnxruntime's post-training static
quantisation (``QOperator`` format, per-channel int8 weights, uint8 activations,
MinMax calibration on training inputs): its fused ``QLinearConv`` / ``QLinearMatMul``
kernels ran faster than float32 at batch 1 and 256 on the MNIST-1D and Fashion-MNIST
teachers on this machine's CPU (AVX-512 VNNI), where the QDQ format was slower than
float32 at batch 1.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from protege.common import describe, eval_mode

__all__ = [
    "ExportCheck",
    "Int8Result",
    "ModelFigures",
    "export_onnx",
    "export_pick_onnx",
    "export_torchscript",
    "quantize_int8",
]

logger = logging.getLogger(__name__)

_EXTRA = "pip install 'protege[export]'"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _onnxruntime() -> Any:
    try:
        import onnx  # noqa: F401  (the exporter and the quantiser need it)
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"ONNX export needs onnx and onnxruntime: {_EXTRA}") from exc
    return onnxruntime


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """An exported file and how closely it reproduces the PyTorch model.

    Attributes:
        path: The file written.
        format: ``onnx`` or ``torchscript``.
        max_abs_diff: Largest absolute difference of any output on the check inputs.
        samples: How many inputs were compared.
        size_bytes: Size of the file.
    """

    path: Path
    format: str
    max_abs_diff: float
    samples: int
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"path": str(self.path)}


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    """One ONNX model's measured size, accuracy and latency (onnxruntime, CPU).

    Attributes:
        size_bytes: Size of the file.
        accuracy: Top-1 accuracy on the evaluation data, if given.
        latency_ms: Median time of one forward pass at batch 1.
        batch_latency_ms: Median time of one forward pass at ``batch_size``.
    """

    size_bytes: int
    accuracy: float | None
    latency_ms: float
    batch_latency_ms: float


@dataclasses.dataclass(frozen=True)
class Int8Result:
    """The int8 model next to its float32 source, measured the same way.

    Attributes:
        path: The int8 ONNX file.
        fp32: The float32 model's figures.
        int8: The int8 model's figures.
        agreement: Fraction of evaluation inputs where both models predict the same class.
        calibration_samples: Training inputs the activation ranges were calibrated on.
        batch_size: Batch of ``batch_latency_ms``.
        threads: onnxruntime intra-op threads while timing.
    """

    path: Path
    fp32: ModelFigures
    int8: ModelFigures
    agreement: float | None
    calibration_samples: int
    batch_size: int
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"path": str(self.path)}


def _check_inputs(example_input: torch.Tensor, check_inputs: torch.Tensor | None) -> torch.Tensor:
    inputs = example_input if check_inputs is None else check_inputs
    return inputs.detach().cpu().float()


@torch.no_grad()
def _reference(model: nn.Module, inputs: torch.Tensor) -> np.ndarray:
    with eval_mode(model):
        return model(inputs).float().numpy()


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, *,
                check_inputs: torch.Tensor | None = None, opset: int = 17) -> ExportCheck:
    """Write ``model`` as ONNX (batch axis dynamic) and compare it with PyTorch.

    Args:
        model: The network, on the CPU.
        example_input: One batch it accepts (traced once).
        path: Where the ``.onnx`` file goes.
        check_inputs: Inputs both runtimes are compared on (default: ``example_input``).
        opset: ONNX opset.

    Raises:
        ImportError: If onnx or onnxruntime is missing (the ``export`` extra).
    """
    ort = _onnxruntime()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    with eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model, (example_input.cpu(),), str(path), dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset)
    inputs = _check_inputs(example_input, check_inputs)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: inputs.numpy()})[0]
    return ExportCheck(path, "onnx", _max_diff(got, _reference(model, inputs)), len(inputs),
                       path.stat().st_size)


def export_torchscript(model: nn.Module, example_input: torch.Tensor, path: str | Path, *,
                       check_inputs: torch.Tensor | None = None) -> ExportCheck:
    """Write ``model`` as a traced TorchScript file and compare the reloaded file with PyTorch.

    TorchScript is deprecated in recent PyTorch (its warnings are silenced here) but
    still loads with ``torch.jit.load`` in C++ and Python without protege.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu()
    inputs = _check_inputs(example_input, check_inputs)
    with eval_mode(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example_input.cpu())
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))
        got = loaded(inputs).float().numpy()
    return ExportCheck(path, "torchscript", _max_diff(got, _reference(model, inputs)),
                       len(inputs), path.stat().st_size)


def _max_diff(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        raise ValueError(f"exported model gives outputs of shape {got.shape}, PyTorch "
                         f"{want.shape}")
    return float(np.abs(got - want).max()) if got.size else 0.0


def export_pick_onnx(folder: Path, student: nn.Module, example_input: torch.Tensor,
                     check_inputs: torch.Tensor | None) -> dict[str, Any]:
    """``student.onnx`` in ``folder`` for the run's summary; never raises.

    A missing onnxruntime or an exporter failure is recorded as ``error`` instead:
    the search's results are already saved and must not be lost to the export.
    """
    try:
        check = export_onnx(student, example_input, folder / "student.onnx",
                            check_inputs=check_inputs)
    except ImportError as exc:
        logger.warning("no ONNX export: %s", exc)
        return {"error": str(exc)}
    except Exception as exc:  # the exporter raises many kinds; none may cost the run
        logger.warning("ONNX export failed: %s: %s", type(exc).__name__, exc)
        return {"error": describe(exc)}
    logger.info("ONNX export: max abs difference %.3g on %d inputs", check.max_abs_diff,
                check.samples)
    return {"path": check.path.name, "max_abs_diff": check.max_abs_diff,
            "samples": check.samples, "size_bytes": check.size_bytes}


class _Calibration:
    """onnxruntime's ``CalibrationDataReader`` protocol over batches of training inputs."""

    def __init__(self, inputs: torch.Tensor, batch_size: int) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [inputs[i:i + batch_size].numpy() for i in range(0, len(inputs), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_int8(onnx_path: str | Path, path: str | Path, *, calibration: torch.Tensor,
                  evaluation: TensorDataset | None = None, batch_size: int = 256,
                  threads: int = 1) -> Int8Result:
    """Post-training static int8 quantisation of an ONNX model, measured before and after.

    Args:
        onnx_path: The float32 model (as written by :func:`export_onnx`).
        path: Where the int8 model goes.
        calibration: Training inputs whose activation ranges fix the int8 scales
            (a few hundred are enough).
        evaluation: ``(x, y)`` data both models are scored on, e.g. the test set.
        batch_size: The larger batch timed besides batch 1.
        threads: onnxruntime intra-op threads while timing (1: least noisy).

    Raises:
        ImportError: If onnx or onnxruntime is missing (the ``export`` extra).
    """
    ort = _onnxruntime()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, path = Path(onnx_path), Path(path)
    calibration = calibration.detach().cpu().float()
    prepared = path.with_name(f".{path.stem}.prepared.onnx")
    try:
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_static(str(prepared), str(path), _Calibration(calibration, 64),  # type: ignore[arg-type]
                        quant_format=QuantFormat.QOperator, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                for p in (onnx_path, path)]
    one = calibration[:1].numpy()
    batch = np.repeat(one, batch_size, axis=0)
    figures, predictions = [], []
    for file, session in zip((onnx_path, path), sessions, strict=True):
        accuracy, predicted = _score(session, evaluation)
        predictions.append(predicted)
        figures.append(ModelFigures(
            size_bytes=file.stat().st_size, accuracy=accuracy,
            latency_ms=_median_ms(functools.partial(session.run, None, {INPUT_NAME: one})),
            batch_latency_ms=_median_ms(
                functools.partial(session.run, None, {INPUT_NAME: batch}))))
    agreement = (float(np.mean(predictions[0] == predictions[1]))
                 if predictions[0] is not None and predictions[1] is not None else None)
    return Int8Result(path, figures[0], figures[1], agreement, len(calibration), batch_size,
                      threads)


def _score(session: Any, data: TensorDataset | None) -> tuple[float | None, np.ndarray | None]:
    if data is None:
        return None, None
    x, y = data.tensors[0].float().numpy(), data.tensors[1].numpy()
    predicted = np.concatenate([session.run(None, {INPUT_NAME: x[i:i + 1024]})[0].argmax(-1)
                                for i in range(0, len(x), 1024)])
    return float(np.mean(predicted == y)), predicted


def _median_ms(fn: Callable[[], object], *, warmup: int = 10, repeats: int = 15,
               min_repeat_ms: float = 1.0) -> float:
    """Median over repeats of the mean call time, each repeat at least ``min_repeat_ms``
    long (the method of ``protege.estimators.measure_latency``)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    once_ms = max((time.perf_counter() - start) * 1e3, 1e-4)
    number = max(1, int(min_repeat_ms / once_ms + 0.999))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - start) * 1e3 / number)
    return statistics.median(samples)
