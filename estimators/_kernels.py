"""Kernels as the runtime runs them: ONNX Runtime's per-node profile of one model.

After ONNX Runtime has optimised a graph, each node it runs is one *kernel* with the
runtime's fusions already applied: BatchNorm folded into the convolution at export,
``Conv + Relu`` and ``Conv + Add + Relu`` fused into one ``FusedConv`` (fp32, NCHWc),
``QLinearConv`` / ``QLinearAdd`` in int8. This is the kernel-detection step of
nn-Meter (Zhang et al., "nn-Meter: Towards Accurate Latency Prediction of
Deep-Learning Model Inference on Diverse Edge Devices", MobiSys 2021) done by the
runtime itself instead of by rules that imitate it: the profiler names each kernel
that ran, its operator, its input and output shapes and its duration.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protege.estimators._runtime import prepare_runner

__all__ = ["Kernel", "kernel_key", "profile_kernels"]

logger = logging.getLogger(__name__)

Shapes = tuple[tuple[int, ...], ...]
_SUFFIX = "_kernel_time"
_TOKEN = re.compile(r"_token_\d+")


@dataclass(frozen=True)
class Kernel:
    """One node ONNX Runtime ran.

    Attributes:
        name: Node name in the optimised graph (stable across widths of one network).
        op: Operator (``FusedConv``, ``QLinearConv``, ``MaxPool``...).
        shapes: Shapes of its non-scalar inputs, then of its outputs.
        ms: Median duration over the profiled runs (milliseconds).
    """

    name: str
    op: str
    shapes: Shapes
    ms: float


def kernel_key(op: str, shapes: Shapes) -> str:
    """The lookup-table key of a kernel: operator and shapes (equal keys, same kernel)."""
    return f"{op}@{shapes}"


def _shapes(entries: Sequence[Any]) -> list[tuple[int, ...]]:
    out = []
    for entry in entries or ():
        for shape in dict(entry).values():
            if shape:
                out.append(tuple(int(d) for d in shape))
    return out


def parse_profile(events: Sequence[Any], *, skip_runs: int = 0) -> list[Kernel]:
    """Kernels of an ONNX Runtime profile (``end_profiling`` JSON), in execution order.

    Args:
        events: The profile's events.
        skip_runs: Leading runs left out of the durations (warm-up).
    """
    durations: dict[str, list[float]] = {}
    first: dict[str, tuple[str, Shapes]] = {}
    names: dict[str, str] = {}  # runtime's node name -> stable name
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith(_SUFFIX):
            continue
        raw = event["name"][: -len(_SUFFIX)]
        if raw not in names:
            # the optimiser numbers the nodes it creates ("_token_17") through the whole
            # graph, so a dropped block renumbers every later node: keep the scope name
            # and count repeats in execution order instead
            stem = _TOKEN.sub("", raw)
            taken = sum(1 for value in names.values() if value.split("#")[0] == stem)
            names[raw] = stem if not taken else f"{stem}#{taken}"
        name = names[raw]
        args = event.get("args", {})
        durations.setdefault(name, []).append(float(event.get("dur", 0)) / 1e3)
        if name not in first:
            shapes = tuple(_shapes(args.get("input_type_shape", ()))
                           + _shapes(args.get("output_type_shape", ())))
            first[name] = (str(args.get("op_name", "?")), shapes)
    kernels = []
    for name, (op, shapes) in first.items():
        times = durations[name]
        kept = times[skip_runs:] or times
        kernels.append(Kernel(name=name, op=op, shapes=shapes, ms=statistics.median(kept)))
    return kernels


def profile_kernels(model: nn.Module, example_input: torch.Tensor, *, precision: str = "fp32",
                    batch_size: int = 1, threads: int = 1, runs: int = 10,
                    warmup: int = 3) -> list[Kernel]:
    """Export ``model``, let ONNX Runtime optimise it, and profile each kernel it runs.

    Args:
        model: The network, on the CPU.
        example_input: One batch it accepts.
        precision: ``fp32`` or ``int8`` (static quantisation).
        batch_size: Batch of the profiled runs.
        threads: Intra-op threads.
        runs: Profiled runs after warm-up; each kernel's median over them is kept
            (1 run gives the shapes only, with rough times).
        warmup: Runs left out of the durations.

    Raises:
        ImportError: If onnx or onnxruntime is missing.
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="protege-profile-") as tmp:
        with prepare_runner(model, example_input, runtime="onnxruntime", precision=precision,
                            batch_size=batch_size, threads=threads,
                            profile_prefix=str(Path(tmp) / "profile")) as runner:
            for _ in range(warmup + max(1, runs)):
                runner.run()
            path = runner.session.end_profiling()
            events = json.loads(Path(path).read_text())
    kernels = parse_profile(events, skip_runs=warmup)
    if not kernels:
        logger.warning("onnxruntime's profile listed no kernels")
    return kernels


def features(shapes: Shapes) -> tuple[float, float, float, float]:
    """Regression features of a kernel: (1, input elements, output elements, their product).

    At one position of a network only channel counts change between students, so
    the input and output elements scale with the input and output channels and
    their product with the multiply-accumulates of a convolution or matmul (the
    profiler does not show prepacked int8 weights' shapes, so MACs are not read off).
    Units: millions of elements, and their product in 1e12.
    """
    if not shapes:
        return 1.0, 0.0, 0.0, 0.0
    first, last = math.prod(shapes[0]) / 1e6, math.prod(shapes[-1]) / 1e6
    return 1.0, first, last, first * last
