"""Deployable students: ONNX and TorchScript files checked against PyTorch, and int8 ONNX.

The ONNX and int8 mechanics are ``protege.estimators``' (:func:`export_onnx_file`,
:func:`quantize_int8_file`), the ones the latency objective is measured on, so a
deployed file is the file the search timed: PyTorch's TorchScript-based exporter
(``dynamo=False``, no ``onnxscript`` needed offline), and onnxruntime's post-training
static quantisation (``QOperator`` format, per-channel int8 weights, uint8 activations,
MinMax calibration, here on training inputs). Every file written here is checked
against the PyTorch outputs with onnxruntime, and the int8 model is timed next to its
float32 source with the estimators' protocol (:func:`time_callable`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from protege.common import describe, eval_mode
from protege.estimators import (
    TimingConfig,
    export_onnx_file,
    float32_unless_integer,
    onnxruntime_module,
    ort_session,
    quantize_int8_file,
    time_callable,
)

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
        latency_ms: Time of one forward pass at batch 1 (``protege.estimators``' protocol:
            smallest block median).
        batch_latency_ms: The same at ``batch_size``.
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
    return float32_unless_integer(example_input if check_inputs is None else check_inputs)


def _feed(session: Any, inputs: np.ndarray) -> dict[str, np.ndarray]:
    return {session.get_inputs()[0].name: inputs}


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
    ort = onnxruntime_module()
    model = model.cpu()
    written = export_onnx_file(model, example_input, path, opset=opset)
    inputs = _check_inputs(example_input, check_inputs)
    session = ort.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    got = session.run(None, _feed(session, inputs.numpy()))[0]
    return ExportCheck(written, "onnx", _max_diff(got, _reference(model, inputs)), len(inputs),
                       written.stat().st_size)


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
    onnx_path = Path(onnx_path)
    calibration = float32_unless_integer(calibration)
    int8_path = quantize_int8_file(onnx_path, path, calibration=calibration)
    timing = TimingConfig(threads=threads)
    one = calibration[:1].numpy()
    batch = np.repeat(one, batch_size, axis=0)
    figures, predictions = [], []
    for file in (onnx_path, int8_path):
        session = ort_session(file, threads=threads)
        accuracy, predicted = _score(session, evaluation)
        predictions.append(predicted)
        figures.append(ModelFigures(
            size_bytes=file.stat().st_size, accuracy=accuracy,
            latency_ms=time_callable(functools.partial(session.run, None, _feed(session, one)),
                                     timing).ms,
            batch_latency_ms=time_callable(
                functools.partial(session.run, None, _feed(session, batch)), timing).ms))
    agreement = (float(np.mean(predictions[0] == predictions[1]))
                 if predictions[0] is not None and predictions[1] is not None else None)
    return Int8Result(int8_path, figures[0], figures[1], agreement, len(calibration), batch_size,
                      threads)


def _score(session: Any, data: TensorDataset | None) -> tuple[float | None, np.ndarray | None]:
    if data is None:
        return None, None
    x, y = float32_unless_integer(data.tensors[0]).numpy(), data.tensors[1].numpy()
    predicted = np.concatenate([session.run(None, _feed(session, x[i:i + 1024]))[0].argmax(-1)
                                for i in range(0, len(x), 1024)])
    return float(np.mean(predicted == y)), predicted
