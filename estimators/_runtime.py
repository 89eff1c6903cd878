"""The deployment runtimes a latency is measured on: PyTorch eager, or ONNX Runtime fp32/int8.

A model becomes a *runner*: a no-argument callable that runs one forward pass of a
fixed batch on the chosen runtime, prepared once (export, quantisation, session) so
that timing it measures inference only.

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``; eval mode,
so BatchNorm is folded into the preceding convolution), and ONNX Runtime applies its
own fusions at session creation (``ORT_ENABLE_ALL``: conv + activation, conv + add +
activation, NCHWc layouts). Int8 is the project's static quantisation path:
onnxruntime's ``quantize_static`` in the ``QOperator`` format (per-channel int8
weights, uint8 activations, MinMax calibration), as ``protege.search`` exports it. For
latency, the calibration inputs are the example input plus noise (integer inputs, token
ids, the example alone): the scales do not change which kernels run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from protege.common import eval_mode

__all__ = [
    "PRECISIONS",
    "RUNTIMES",
    "LatencySettings",
    "Precision",
    "Runner",
    "Runtime",
    "default_runtime",
    "export_onnx_file",
    "float32_unless_integer",
    "onnxruntime_module",
    "ort_session",
    "prepare_runner",
    "quantize_int8_file",
]

logger = logging.getLogger(__name__)

Runtime = Literal["onnxruntime", "torch"]
Precision = Literal["fp32", "int8"]
RUNTIMES: tuple[str, ...] = ("onnxruntime", "torch")
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
INPUT_NAME, OUTPUT_NAME = "input", "logits"
_EXTRA = "pip install 'protege[export]'"


def onnxruntime_module() -> Any:
    """Import onnxruntime (and check onnx), or raise one clear ImportError naming the extra."""
    try:
        import onnx  # noqa: F401  (the exporter and the quantiser need it)
        import onnxruntime
    except ImportError as exc:
        raise ImportError(f"ONNX export and latency on onnxruntime need onnx and onnxruntime: "
                          f"{_EXTRA}") from exc
    return onnxruntime


def default_runtime() -> Runtime:
    """``onnxruntime`` where it (and onnx) is installed, else ``torch``."""
    try:
        onnxruntime_module()
    except ImportError:
        return "torch"
    return "onnxruntime"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatencySettings:
    """Where and how a latency is measured or predicted (the ``latency:`` config keys).

    Attributes:
        runtime: ``onnxruntime`` or ``torch``; None until :meth:`resolve` picks
            ``onnxruntime`` where it is installed.
        precision: ``fp32`` or ``int8`` (onnxruntime's static quantisation).
        batch_size: Batch of each forward pass.
        threads: Intra-op threads.
    """

    runtime: str | None = None
    precision: str = "fp32"
    batch_size: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        check_settings(self.runtime or "onnxruntime", self.precision, self.batch_size,
                       self.threads)

    def resolve(self) -> LatencySettings:
        """The settings with the runtime chosen, checked.

        Raises:
            ValueError: For an unknown runtime or precision, int8 on torch, a batch or
                thread count below 1.
        """
        resolved = dataclasses.replace(self, runtime=self.runtime or default_runtime())
        assert resolved.runtime is not None
        check_settings(resolved.runtime, resolved.precision, resolved.batch_size,
                       resolved.threads)
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able data (for records)."""
        return dataclasses.asdict(self)


def check_settings(runtime: str, precision: str, batch_size: int, threads: int) -> None:
    """Raise ValueError for an unknown runtime or precision, or a bad batch or thread count."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if runtime == "torch" and precision != "fp32":
        raise ValueError("precision 'int8' needs runtime 'onnxruntime' (static quantisation)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")


def batch_of(example_input: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The first sample of ``example_input`` repeated ``batch_size`` times (contiguous, CPU).

    Raises:
        TypeError: If ``example_input`` is not a batched tensor.
        ValueError: If ``batch_size < 1``.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise TypeError("example_input must be a batched tensor, e.g. shape (1, C, H, W)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    one = example_input[:1].detach().cpu()
    return one.expand(batch_size, *one.shape[1:]).contiguous()


def export_onnx_file(model: nn.Module, example_input: torch.Tensor, path: str | Path, *,
                     opset: int = 17) -> Path:
    """Write ``model`` (eval mode, batch axis dynamic) as ONNX with the TorchScript exporter.

    Raises:
        ImportError: If onnx or onnxruntime is missing.
    """
    onnxruntime_module()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with eval_mode(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(model.cpu(), (example_input.cpu(),), str(path), dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset)
    return path


class _Calibration:
    """onnxruntime's ``CalibrationDataReader`` protocol over a list of batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self._batches = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def float32_unless_integer(inputs: torch.Tensor) -> torch.Tensor:
    """``inputs`` on the CPU; floating ones as float32, integer ones (token ids) as they are."""
    inputs = inputs.detach().cpu()
    return inputs.float() if inputs.is_floating_point() else inputs


def quantize_int8_file(onnx_path: str | Path, path: str | Path, *,
                       calibration: torch.Tensor) -> Path:
    """Static int8 quantisation (QOperator, per-channel int8 weights, uint8 activations).

    Args:
        onnx_path: The float32 model.
        path: Where the int8 model goes.
        calibration: Inputs whose activation ranges fix the scales, shape ``(N, ...)``
            (floating ones are fed as float32, integer ones keep their dtype).

    Raises:
        ImportError: If onnx or onnxruntime is missing.
    """
    onnxruntime_module()
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx_path, path = Path(onnx_path), Path(path)
    data = float32_unless_integer(calibration).numpy()
    batches = [data[i:i + 64] for i in range(0, len(data), 64)]
    prepared = path.with_name(f".{path.stem}.prepared.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(onnx_path), str(prepared))
            quantize_static(str(prepared), str(path), _Calibration(batches),  # type: ignore[arg-type]
                            quant_format=QuantFormat.QOperator, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    return path


@dataclass
class Runner:
    """One prepared forward pass on a runtime.

    Attributes:
        run: Runs the forward pass once (no arguments).
        session: The onnxruntime session (None for torch), for its profiler.
    """

    run: Callable[[], object]
    session: Any = None


def ort_session(path: str | Path, *, threads: int, profile_prefix: str | None = None) -> Any:
    """A CPU session with all graph optimisations, ``threads`` intra-op threads, sequential."""
    ort = onnxruntime_module()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_model_file(model: nn.Module, example_input: torch.Tensor, folder: Path, *,
                    precision: str) -> Path:
    """Export ``model`` to ``folder`` and quantise it when ``precision == "int8"``."""
    one = batch_of(example_input, 1)
    fp32 = export_onnx_file(model, one, folder / "model.onnx")
    if precision == "fp32":
        return fp32
    if one.is_floating_point():
        generator = torch.Generator().manual_seed(0)
        calibration = one + 0.5 * torch.randn((16, *one.shape[1:]), generator=generator)
    else:  # token ids: noise would make them floats (and invalid ids); the example itself
        calibration = one
    return quantize_int8_file(fp32, folder / "model.int8.onnx", calibration=calibration)


@contextlib.contextmanager
def prepare_runner(model: nn.Module, example_input: torch.Tensor, *, runtime: str = "onnxruntime",
                   precision: str = "fp32", batch_size: int = 1, threads: int = 1,
                   profile_prefix: str | None = None) -> Iterator[Runner]:
    """Prepare ``model`` for timing on a runtime; the files it needs live while the block runs.

    Args:
        model: The network, on the CPU (its train/eval modes are restored after).
        example_input: One batch it accepts; its first sample is repeated ``batch_size`` times.
        runtime: ``onnxruntime`` (exported, optimised by the runtime) or ``torch`` (eager).
        precision: ``fp32``, or ``int8`` (onnxruntime only: static quantisation).
        batch_size: Batch of each forward pass.
        threads: Intra-op threads (torch's are set by the timer).
        profile_prefix: Enable onnxruntime's per-node profiler, writing under this prefix.

    Raises:
        ValueError: For unknown settings or int8 on torch.
        ImportError: For onnxruntime when onnx or onnxruntime is missing.
    """
    check_settings(runtime, precision, batch_size, threads)
    x = batch_of(example_input, batch_size)
    if runtime == "torch":
        with eval_mode(model), torch.no_grad():
            yield Runner(run=lambda: model(x))
        return
    with tempfile.TemporaryDirectory(prefix="protege-latency-") as tmp:
        path = onnx_model_file(model, x, Path(tmp), precision=precision)
        session = ort_session(path, threads=threads, profile_prefix=profile_prefix)
        feed = {INPUT_NAME: x.numpy()}
        yield Runner(run=lambda: session.run(None, feed), session=session)
