"""Exact multiply-accumulate and parameter counts of a model, per sample."""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable
from typing import Any

import thop
import torch
from thop.vision.basic_hooks import count_normalization
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from protege.common import eval_mode

__all__ = ["THOP_RULES", "count_macs", "count_macs_torch", "count_params"]

logger = logging.getLogger(__name__)


def _zero(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    module.total_ops += torch.zeros(1, dtype=torch.float64)  # type: ignore[operator]


def _torch_counted(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    """A leaf thop has no rule for: count its own forward with PyTorch's counter."""
    with FlopCounterMode(display=False) as counter:
        module.forward(*inputs)  # not module(...): that would re-enter thop's hook
    flops = torch.tensor([counter.get_total_flops() // 2], dtype=torch.float64)
    module.total_ops += flops  # type: ignore[operator]


_ZERO_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.Mish, nn.ELU, nn.SELU, nn.Softplus, nn.Hardtanh,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ZeroPad1d, nn.ChannelShuffle,
)

THOP_RULES: dict[type[nn.Module], Callable[..., None]] = {
    **{kind: _zero for kind in _ZERO_TYPES},
    nn.GroupNorm: count_normalization,
}
"""Rules protege adds to thop's: elementwise activations, reshapes and padding count as
zero (thop's convention for ReLU), GroupNorm like BatchNorm. A leaf module of any other
type thop has no rule for (attention, custom layers) is counted by running it under
``torch.utils.flop_counter`` instead of thop's silent zero."""


_THOP_HOOKS = importlib.import_module("thop.profile").register_hooks  # the module, not the function


def _rules_for(model: nn.Module) -> dict[type[nn.Module], Callable[..., None]]:
    rules = dict(THOP_RULES)
    for module in model.modules():
        kind = type(module)
        if next(iter(module.children()), None) is None and kind not in rules \
                and kind not in _THOP_HOOKS:
            logger.debug("thop has no rule for %s; using the torch counter", kind.__name__)
            rules[kind] = _torch_counted
    return rules


def _one_sample(example_input: torch.Tensor) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise TypeError("example_input must be a batched tensor, e.g. shape (1, C, H, W)")
    return example_input[:1]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not), counting shared tensors once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """MACs of one forward pass on one sample, and the parameter count.

    MACs come from thop, which also counts normalisation and pooling as
    elementwise work; :func:`count_macs_torch` gives the matmul/conv-only count
    of PyTorch's own counter for cross-checking. The model is not modified
    (thop's hooks and buffers go on a copy).

    Args:
        model: Any module.
        example_input: A batch the model accepts; only its first sample is used.

    Returns:
        ``(macs, params)`` as integers.
    """
    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        macs, _ = thop.profile(probe, inputs=(_one_sample(example_input),),
                                custom_ops=_rules_for(probe), verbose=False)
    return int(round(float(macs))), count_params(model)


def count_macs_torch(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs of one sample from ``torch.utils.flop_counter`` (FLOPs / 2).

    It counts matrix products and convolutions only, so it is a lower bound of
    :func:`count_macs` and equals it on networks of convolutions and linear layers.
    """
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(_one_sample(example_input))
    return int(counter.get_total_flops()) // 2
