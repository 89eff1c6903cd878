"""Copying a network safely, running it so a failure names its module, and checking a
student in both modes.

A student is trained in training mode and deployed in eval mode, and networks differ
between the two (auxiliary heads, batch statistics, cached tensors), so every check
here runs both. Training mode gets a batch of two samples: batch statistics cannot be
computed from one.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from protege.common import describe, in_mode, module_stack

__all__ = ["ForwardError", "clone", "forward_named", "kept_buffers", "mode_batch",
           "student_fault"]


class ForwardError(RuntimeError):
    """A forward pass failed; the message names the mode, the module and the error.

    Attributes:
        module: Qualified name of the innermost module that was running ('' for the
            top level).
    """

    def __init__(self, message: str, module: str) -> None:
        super().__init__(message)
        self.module = module


def _non_leaf_tensors(value: Any, found: dict[int, torch.Tensor], depth: int = 0) -> None:
    if isinstance(value, torch.Tensor):
        if value.grad_fn is not None:
            found[id(value)] = value
    elif depth < 3 and isinstance(value, dict):
        for item in value.values():
            _non_leaf_tensors(item, found, depth + 1)
    elif depth < 3 and isinstance(value, (list, tuple)):
        for item in value:
            _non_leaf_tensors(item, found, depth + 1)


def clone(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that also works when it holds non-leaf tensors.

    ``copy.deepcopy`` refuses tensors with a ``grad_fn``, which models keep when they
    cache something computed from their parameters (LeViT's attention biases) after a
    forward pass with gradients on. Such tensors are copied detached; the original is
    not modified.
    """
    found: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, value in vars(module).items():
            if not name.startswith("_"):
                _non_leaf_tensors(value, found)
    memo: dict[int, Any] = {key: tensor.detach().clone() for key, tensor in found.items()}
    return copy.deepcopy(model, memo)


def mode_batch(example_input: torch.Tensor, training: bool) -> torch.Tensor:
    """The example batch for a mode: at least two samples in training mode."""
    if training and len(example_input) < 2:
        return torch.cat([example_input[:1], example_input[:1]])
    return example_input


@contextlib.contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """Put every buffer (BatchNorm statistics, counters) back as it was after the block."""
    saved = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                if name in saved and buffer.shape == saved[name].shape:
                    buffer.copy_(saved[name])


def forward_named(model: nn.Module, example_input: torch.Tensor, *, training: bool) -> Any:
    """``model(x)`` in the given mode (restored afterwards), under ``no_grad``.

    Raises:
        ForwardError: If the forward pass fails; the message names the mode and the
            innermost module that was running.
    """
    mode = "training" if training else "eval"
    with module_stack(model) as stack:
        try:
            with torch.no_grad(), in_mode(model, training):
                return model(mode_batch(example_input, training))
        except Exception as exc:
            where = stack[-1] if stack else ""
            kind = type(model.get_submodule(where)).__name__ if where else type(model).__name__
            raise ForwardError(f"in {mode} mode, in module {where or '<top level>'!r} ({kind}): "
                               f"{describe(exc)}", where) from exc


def student_fault(student: nn.Module, example_input: torch.Tensor,
                  output_shape: tuple[int, ...] | None) -> str | None:
    """Why ``student`` does not work in eval or training mode, or None when it does.

    It works when it gives a tensor of ``output_shape`` (the teacher's, per sample
    beyond the first dimension in training mode) in both modes; with None, when it
    runs in both.
    """
    for training in (False, True):
        try:
            output = forward_named(student, example_input, training=training)
        except ForwardError as exc:
            return str(exc)
        if output_shape is None:
            continue
        mode = "training" if training else "eval"
        if not isinstance(output, torch.Tensor):
            return f"in {mode} mode the output is a {type(output).__name__}, not a tensor"
        if tuple(output.shape[1:]) != output_shape[1:]:
            return f"in {mode} mode the output has shape {tuple(output.shape)}, not {output_shape}"
    return None
