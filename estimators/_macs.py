"""Exact multiply-accumulate and parameter counts of a model, per sample."""

from __future__ import annotations

import copy
import logging

import thop
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from protege._modes import eval_mode

__all__ = ["count_macs", "count_macs_torch", "count_params"]

logger = logging.getLogger(__name__)


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
        macs, _ = thop.profile(probe, inputs=(_one_sample(example_input),), verbose=False)
    return int(round(float(macs))), count_params(model)


def count_macs_torch(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs of one sample from ``torch.utils.flop_counter`` (FLOPs / 2).

    It counts matrix products and convolutions only, so it is a lower bound of
    :func:`count_macs` and equals it on networks of convolutions and linear layers.
    """
    with eval_mode(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(_one_sample(example_input))
    return int(counter.get_total_flops()) // 2
