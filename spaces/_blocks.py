"""Residual blocks a student can drop, found by watching the teacher run once.

A module is a residual block when its output is ``x + f(x)`` for its own input
``x``, possibly followed by elementwise activations (``relu(x + f(x))``). We see
that in the autograd graph of one forward pass, not from class names: forward
hooks catch each module's input and output, and the output's ``grad_fn`` chain
must lead, through known activations only, to an addition one of whose operands
is the input's own autograd node.

Dropping a block means ``f(x) = 0``: the student computes ``post(x)``, the
activations after the addition applied to the shortcut alone. For ``x + f(x)``
that is ``x``; for ``relu(x + f(x))`` it is ``relu(x)``, which equals ``x`` when
``x`` is itself a ReLU output (the usual case) and is the correct value of the
block with a zeroed branch otherwise. It is deterministic and needs no weights.

A stage is a run of blocks where each one's input is the previous one's output
(so they share resolution and channels), together with the module that opened
the run when it is a sibling of the run's first block (the downsampling block of
a ResNet stage, the expanding block of a MobileNet stage). A stage without such
an opener must keep at least one of its blocks.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from protege.common import describe, in_mode
from protege.spaces._checks import mode_batch

__all__ = ["LayerUse", "ResidualBlock", "Shortcut", "TeacherTrace", "trace_teacher"]

logger = logging.getLogger(__name__)

# Activations allowed between the residual addition and the block's output.
_POST_OPS: dict[str, str] = {
    "ReluBackward0": "relu",
    "ReluBackward1": "relu",
    "SiluBackward0": "silu",
    "SigmoidBackward0": "sigmoid",
}
_POST_MODULES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU,
                                              "sigmoid": nn.Sigmoid}
_ADD_OPS = frozenset({"AddBackward0", "AddBackward1"})


class Shortcut(nn.Sequential):
    """What a dropped residual block becomes: its activations applied to its input.

    Built of standard modules (an ``Identity`` and the activations), so MAC
    counters, ONNX export and ``state_dict`` treat it like any other layer.

    Args:
        post: Names of the activations after the block's addition, in order.
    """

    def __init__(self, post: tuple[str, ...] = ()) -> None:
        super().__init__(nn.Identity(), *(_POST_MODULES[name]() for name in post))
        self.post = tuple(post)


@dataclasses.dataclass(frozen=True)
class ResidualBlock:
    """A module whose output is ``post(x + f(x))`` for its input ``x``.

    Attributes:
        name: Qualified module name in the teacher.
        post: Activations after the addition (kept when the block is dropped).
        stage: Index of the stage (run of chained blocks) it belongs to.
        params: Parameters inside the block (its cost, to pick the cheapest to keep).
    """

    name: str
    post: tuple[str, ...]
    stage: int
    params: int


@dataclasses.dataclass(frozen=True)
class LayerUse:
    """How a layer was used in the traced forward pass.

    Attributes:
        calls: Number of times it ran.
        positions: Output positions per sample and channel (H*W for a 2-D conv).
    """

    calls: int
    positions: int


@dataclasses.dataclass(frozen=True)
class TeacherTrace:
    """What one forward pass of the teacher showed.

    Attributes:
        blocks: Droppable residual blocks, in execution order.
        open_stages: Stages that have no fixed opener, so must keep one block.
        layers: Use of each module that ran, by name.
        output_shape: Shape of the teacher's output on the example input (empty
            when the output is not a tensor).
        output_kind: Type name of the output (``Tensor``, ``tuple``, ...).
    """

    blocks: tuple[ResidualBlock, ...]
    open_stages: frozenset[int]
    layers: dict[str, LayerUse]
    output_shape: tuple[int, ...]
    output_kind: str = "Tensor"


Node = tuple[Any, int]


def _node(tensor: torch.Tensor) -> Node | None:
    if tensor.grad_fn is not None:
        return (tensor.grad_fn, tensor.output_nr)
    return None


@dataclasses.dataclass
class _Record:
    order: int
    input: Node | None = None
    input_tensor: torch.Tensor | None = None
    output: Node | None = None
    post: tuple[str, ...] | None = None
    calls: int = 0
    positions: int = 0


def _residual_post(output: torch.Tensor, record: _Record) -> tuple[str, ...] | None:
    """Activations between the addition and ``output`` if it is ``x + f(x)``, else None."""
    x = record.input_tensor
    if x is None or output.shape != x.shape:
        return None
    fn, post = output.grad_fn, []
    while fn is not None and type(fn).__name__ in _POST_OPS:
        post.append(_POST_OPS[type(fn).__name__])
        fn = fn.next_functions[0][0]
    if fn is None or type(fn).__name__ not in _ADD_OPS:
        return None
    return tuple(reversed(post)) if _adds_to(fn, record, depth=8) else None


def _adds_to(fn: Any, record: _Record, *, depth: int) -> bool:
    """Whether the addition ``fn`` has ``x`` as an operand, directly or through more adds.

    ``(x + f(x)) + g(x + f(x))`` (a transformer block) is ``x + h(x)`` too.
    """
    operands = list(fn.next_functions)
    if len(operands) != 2 or operands[0] == operands[1]:
        return False
    if record.input is not None and record.input in operands:
        return True
    return depth > 0 and any(
        type(other_fn).__name__ in _ADD_OPS and _adds_to(other_fn, record, depth=depth - 1)
        for other_fn, _ in operands)


class _Tracer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.records: dict[str, _Record] = {}
        self.stack: list[str] = []
        self.outputs: dict[Node, list[str]] = {}
        self.keep: list[torch.Tensor] = []  # keeps traced tensors alive, so nodes stay unique

    def pre(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            record = self.records.setdefault(name, _Record(order=len(self.records)))
            record.calls += 1
            self.stack.append(name)
            single = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)
            record.input_tensor = args[0] if single else None
            record.input = _node(args[0]) if single else None
            if single:
                self.keep.append(args[0])
        return hook

    def post(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self.stack and self.stack[-1] == name:
                self.stack.pop()
            record = self.records[name]
            if not isinstance(output, torch.Tensor):
                record.post = None
                return
            self.keep.append(output)
            channels = output.shape[1] if output.dim() > 1 else 1
            record.positions = output[:1].numel() // max(1, channels)
            record.output = _node(output)
            if record.output is not None:
                self.outputs.setdefault(record.output, []).append(name)
            record.post = _residual_post(output, record) if record.calls == 1 else None
        return hook


def trace_teacher(model: nn.Module, example_input: torch.Tensor, *,
                  training: bool = False) -> TeacherTrace:
    """Run ``model`` once with hooks and find its residual blocks and layer uses.

    It runs in eval mode, or in training mode with ``training`` (on at least two
    samples; BatchNorm statistics then move: keep them with ``kept_buffers``).

    Raises:
        RuntimeError: If the forward pass fails; the message names the module that
            was running and the operation's error.
    """
    tracer = _Tracer(model)
    names = {module: name for name, module in model.named_modules()}
    handles = []
    for module, name in names.items():
        if name:
            handles.append(module.register_forward_pre_hook(tracer.pre(name), with_kwargs=True))
            handles.append(module.register_forward_hook(tracer.post(name)))
    # The input itself needs no gradient: the parameters give every later tensor an
    # autograd node (a block reading the raw input is then not seen; it has no stem).
    x = mode_batch(example_input.detach(), training)
    try:
        with in_mode(model, training), torch.enable_grad():
            output = model(x)
    except Exception as exc:
        where = tracer.stack[-1] if tracer.stack else "<top level>"
        kind = type(model.get_submodule(where)).__name__ if tracer.stack else ""
        mode = " in training mode" if training else ""
        raise RuntimeError(f"tracing the teacher failed{mode} in module {where!r} {kind}: "
                           f"{describe(exc)}") from exc
    finally:
        for handle in handles:
            handle.remove()
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
    layers = {name: LayerUse(r.calls, r.positions) for name, r in tracer.records.items()}
    blocks, open_stages = _stages(tracer, names)
    return TeacherTrace(blocks, open_stages, layers, shape, type(output).__name__)


def _innermost(candidates: dict[str, _Record]) -> dict[str, _Record]:
    """Of nested candidates with the same input, keep the innermost (the actual block)."""
    kept = dict(candidates)
    for name, record in candidates.items():
        for other, other_record in candidates.items():
            if other.startswith(name + ".") and other_record.input == record.input:
                kept.pop(name, None)
    return kept


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _stages(tracer: _Tracer, names: dict[nn.Module, str]) -> tuple[tuple[ResidualBlock, ...],
                                                                   frozenset[int]]:
    modules = {name: module for module, name in names.items()}
    candidates = _innermost({name: r for name, r in tracer.records.items() if r.post is not None})
    ordered = sorted(candidates.items(), key=lambda item: item[1].order)
    blocks: list[ResidualBlock] = []
    open_stages: set[int] = set()
    stage, previous_output = -1, None
    for name, record in ordered:
        if previous_output is None or record.input != previous_output:
            stage += 1
            producers = tracer.outputs.get(record.input, []) if record.input else []
            openers = [other for other in producers
                       if _parent(other) == _parent(name) and other not in candidates]
            if not openers:
                open_stages.add(stage)
        params = sum(p.numel() for p in modules[name].parameters())
        assert record.post is not None
        blocks.append(ResidualBlock(name, record.post, stage, params))
        previous_output = record.output
    return tuple(blocks), frozenset(open_stages)
