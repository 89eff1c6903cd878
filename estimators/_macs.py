"""Exact multiply-accumulate and parameter counts of a model, per sample.

thop's per-layer rules do the counting, but thop's driver does not: it hooks a module
once per place it is registered and adds a module's total once per place, so a layer
registered twice and called twice was counted eight times; and it sums leaves only, so
work a module does without calling its children (``nn.MultiheadAttention`` uses
``out_proj.weight`` functionally) or outside any module (``q @ k.T``,
``scaled_dot_product_attention`` in a custom forward) was missed. Here every distinct
module gets one hook, each call of a module with a rule is counted once, and every
operation that runs outside such a module is counted with ``torch.utils.flop_counter``'s
formulas. Transposed convolutions and multi-head attention get rules of their own.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from thop.vision.basic_hooks import count_normalization, zero_ops
from torch import nn
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from protege.common import eval_mode

__all__ = ["THOP_RULES", "count_macs", "count_macs_torch", "count_params"]

logger = logging.getLogger(__name__)

Rule = Callable[..., None]


def transposed_conv_macs(module: nn.modules.conv._ConvTransposeNd, in_numel: int) -> int:
    """Each input position does ``C_in x C_out / groups x prod(kernel)`` MACs.

    thop's convolution rule counts output positions, which for a transposed (strided)
    convolution over-counts by the stride's product; the bias is not counted, as thop
    does not count it for plain convolutions either.
    """
    return in_numel * (module.out_channels // module.groups) * math.prod(module.kernel_size)


def _transposed_conv(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    assert isinstance(module, nn.modules.conv._ConvTransposeNd)
    module.total_ops += torch.tensor(  # type: ignore[operator]
        [float(transposed_conv_macs(module, inputs[0].numel()))], dtype=torch.float64)


def _attention(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
    """``nn.MultiheadAttention``: the q, k, v and output projections and both products.

    Counted from the shapes, so the fused eval-mode path (which neither thop nor
    ``torch.utils.flop_counter`` sees) is counted like the unfused one.
    """
    assert isinstance(module, nn.MultiheadAttention)
    query, key = inputs[0], inputs[1]
    embed = module.embed_dim
    if query.dim() == 2:  # unbatched (L, E)
        batch, length, source = 1, query.shape[0], key.shape[0]
    elif module.batch_first:
        batch, length, source = query.shape[0], query.shape[1], key.shape[1]
    else:
        batch, length, source = query.shape[1], query.shape[0], key.shape[0]
    projections = length * embed * embed * 2 + source * embed * (module.kdim + module.vdim)
    products = 2 * length * source * embed
    module.total_ops += torch.tensor(  # type: ignore[operator]
        [float(batch * (projections + products))], dtype=torch.float64)


_ZERO_TYPES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.AlphaDropout, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.Mish, nn.ELU, nn.SELU, nn.Softplus, nn.Hardtanh,
    nn.ConstantPad1d, nn.ConstantPad2d, nn.ZeroPad1d, nn.ChannelShuffle,
)

THOP_RULES: dict[type[nn.Module], Rule] = {
    **{kind: zero_ops for kind in _ZERO_TYPES},
    nn.GroupNorm: count_normalization,
    nn.ConvTranspose1d: _transposed_conv,
    nn.ConvTranspose2d: _transposed_conv,
    nn.ConvTranspose3d: _transposed_conv,
    nn.MultiheadAttention: _attention,
}
"""Rules protege adds to thop's: elementwise activations, reshapes and padding count as
zero (thop's convention for ReLU), GroupNorm like BatchNorm, transposed convolutions by
input position, multi-head attention from its shapes. Any module without a rule (custom
layers, containers) is not counted itself: its children are, and whatever it computes
outside them is counted with ``torch.utils.flop_counter``'s formulas."""


_THOP_HOOKS: dict[type[nn.Module], Rule] = (
    importlib.import_module("thop.profile").register_hooks)  # the module, not the function


def _cpu_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                         out_shape: Any = None, **kwargs: Any) -> int:
    return int(flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape))


# On the CPU, scaled_dot_product_attention runs this kernel, which torch's counter lacks.
_EXTRA_FORMULAS: dict[Any, Callable[..., int]] = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    _EXTRA_FORMULAS[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = (
        _cpu_attention_flops)


_WRAPPED = {packet: flop_counter.shape_wrapper(formula)
            for packet, formula in _EXTRA_FORMULAS.items()}


def _rule(module: nn.Module) -> Rule | None:
    """The rule that counts ``module`` as a whole, or None to look inside it.

    thop's rules for containers (``Sequential`` counts zero) are not used: their
    children are counted instead.
    """
    kind = type(module)
    if kind in THOP_RULES:
        return THOP_RULES[kind]
    if kind in _THOP_HOOKS and next(iter(module.children()), None) is None:
        return _THOP_HOOKS[kind]
    return None


class _Outside(TorchDispatchMode):
    """Counts FLOPs of operations that run while no module with a rule is running."""

    def __init__(self, depth: list[int]) -> None:
        super().__init__()
        self.depth = depth
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth[0] == 0:
            packet = func._overloadpacket
            formula = _WRAPPED.get(packet, flop_counter.flop_registry.get(packet))
            if formula is not None:
                self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def _hooks(model: nn.Module, depth: list[int], totals: list[float]) -> Iterator[Any]:
    """One pair of hooks per distinct module with a rule (``modules()`` skips repeats)."""
    for module in model.modules():
        rule = _rule(module)
        if rule is None:
            continue

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            depth[0] += 1

        def post(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: Any, rule: Rule = rule) -> None:
            depth[0] -= 1
            if depth[0] > 0:  # inside another counted module: counted there
                return
            inputs = args + tuple(kwargs[k] for k in ("query", "key", "value", "input")
                                  if k in kwargs)
            had = module.__dict__.get("total_ops")
            module.__dict__["total_ops"] = torch.zeros(1, dtype=torch.float64)
            try:
                rule(module, inputs, output)
                totals[0] += float(module.__dict__["total_ops"])
            finally:
                if had is None:
                    del module.__dict__["total_ops"]
                else:
                    module.__dict__["total_ops"] = had

        yield module.register_forward_pre_hook(pre, with_kwargs=True)
        yield module.register_forward_hook(post, with_kwargs=True)


def _one_sample(example_input: torch.Tensor) -> torch.Tensor:
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise TypeError("example_input must be a batched tensor, e.g. shape (1, C, H, W)")
    return example_input[:1]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not), counting shared tensors once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def count_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """MACs of one forward pass on one sample, and the parameter count.

    Modules with a rule (thop's, and :data:`THOP_RULES`) are counted by it once per
    call, so thop's convention holds (normalisation and pooling count as elementwise
    work); everything else that runs is counted with PyTorch's formulas (matrix
    products, convolutions, attention). :func:`count_macs_torch` gives the
    matmul/conv-only count of PyTorch's own counter for cross-checking. The model
    runs in eval mode and is left as it was (no copy, no buffers added).

    Args:
        model: Any module.
        example_input: A batch the model accepts; only its first sample is used.

    Returns:
        ``(macs, params)`` as integers.
    """
    depth, totals = [0], [0.0]
    handles = list(_hooks(model, depth, totals))
    outside = _Outside(depth)
    try:
        with eval_mode(model), torch.no_grad(), outside:
            model(_one_sample(example_input))
    finally:
        for handle in handles:
            handle.remove()
    macs = totals[0] + outside.flops / 2
    return int(round(float(macs))), count_params(model)


def count_macs_torch(model: nn.Module, example_input: torch.Tensor) -> int:
    """MACs of one sample from ``torch.utils.flop_counter`` (FLOPs / 2).

    It counts matrix products and convolutions only, so it is a lower bound of
    :func:`count_macs` and equals it on networks of convolutions and linear layers.
    """
    with eval_mode(model), torch.no_grad(), \
            FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        model(_one_sample(example_input))
    return int(counter.get_total_flops()) // 2
