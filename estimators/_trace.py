"""One forward pass that lists every leaf-layer call with its configuration and input shapes."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from protege.estimators._macs import transposed_conv_macs

__all__ = ["LayerCall", "LayerTrace", "trace"]


@dataclass(frozen=True)
class LayerCall:
    """One call of a leaf module during a forward pass.

    Attributes:
        key: Type, hyper-parameters and input shapes: equal keys run the same kernel.
        kind: The module's class name.
        macs: Multiply-accumulates of convolutions and linear layers (0 for others),
            used to estimate a configuration the latency table has not measured.
        io_numel: Input plus output elements: the memory traffic of the call.
        module: The module itself (None when traced on the meta device).
        shapes: Shapes of the tensor arguments.
        dtypes: Their dtypes (token ids of an embedding are integers), in the same order.
    """

    key: str
    kind: str
    macs: float
    io_numel: int
    module: nn.Module | None
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[torch.dtype, ...] = ()


@dataclass(frozen=True)
class LayerTrace:
    """Everything one forward pass tells the latency predictor.

    Attributes:
        calls: Leaf-module calls in execution order.
        other_ops: Tensor-producing torch functions called outside leaf modules
            (residual adds, flatten, functional activations).
        other_numel: Output elements of those functions.
    """

    calls: tuple[LayerCall, ...]
    other_ops: int
    other_numel: int


def _is_leaf(module: nn.Module) -> bool:
    return next(iter(module.children()), None) is None


def _macs(module: nn.Module, in_numel: int, out_numel: int) -> float:
    if isinstance(module, nn.modules.conv._ConvTransposeNd):  # work per input position
        return float(transposed_conv_macs(module, in_numel))
    if isinstance(module, nn.modules.conv._ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return float(out_numel * per_output)
    if isinstance(module, nn.Linear):
        return float(out_numel * module.in_features)
    return 0.0


def layer_key(module: nn.Module, shapes: tuple[tuple[int, ...], ...]) -> str:
    """The latency-table key of a leaf module called on inputs of ``shapes``."""
    return f"{type(module).__name__}({module.extra_repr()})@{shapes}"


class _OutsideOps(TorchFunctionMode):
    """Counts tensor-producing torch functions called while no leaf module runs."""

    def __init__(self, depth: list[int]) -> None:
        super().__init__()
        self.depth = depth
        self.ops = 0
        self.numel = 0

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.depth[0] == 0 and isinstance(out, torch.Tensor) and out.dim() > 0:
            self.ops += 1
            self.numel += out.numel()
        return out


def trace(model: nn.Module, example: torch.Tensor, *, keep_modules: bool) -> LayerTrace:
    """Run ``model(example)`` once under ``no_grad`` and record its leaf-module calls.

    Args:
        model: The network, on the CPU or on the meta device.
        example: The batch to run (meta or real, like the model).
        keep_modules: Keep a reference to each called module (to time it later).
    """
    calls: list[LayerCall] = []
    depth = [0]

    def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        depth[0] += 1

    def post_hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        depth[0] -= 1
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        out_numel = out.numel() if isinstance(out, torch.Tensor) else 0
        in_numel = sum(math.prod(s) for s in shapes)
        calls.append(LayerCall(
            key=layer_key(module, shapes),
            kind=type(module).__name__,
            macs=_macs(module, math.prod(shapes[0]) if shapes else 0, out_numel),
            io_numel=in_numel + out_numel,
            module=module if keep_modules else None,
            shapes=shapes,
            dtypes=tuple(a.dtype for a in args if isinstance(a, torch.Tensor)),
        ))

    handles = []
    for module in model.modules():
        if _is_leaf(module):
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
    counter = _OutsideOps(depth)
    try:
        with torch.no_grad(), counter:
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return LayerTrace(calls=tuple(calls), other_ops=counter.ops, other_numel=counter.numel)
