"""Groups of coupled channels, found once from the teacher's traced graph.

Torch-Pruning's dependency graph does the analysis: a residual addition, a
normalisation layer, a depthwise convolution or a flatten into a linear layer ties
channels of several layers together, and such a group can only be thinned as a
whole. We trace the teacher once and record, per group, every layer dimension it
touches and which of the group's channels each index belongs to. Materialising a
student then replays those records on a copy of the teacher, with no tracing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from protege.common import eval_mode

__all__ = ["ChannelGroup", "DeriveTimeout", "GraphError", "PruneOp", "find_channel_groups",
           "time_limit"]

logger = logging.getLogger(__name__)

# Node types that are Torch-Pruning's stand-ins for functional operations (add,
# cat, reshape, ...): they hold no weights, so a student needs nothing done there.
_VIRTUAL_TYPES = frozenset(
    getattr(tp.ops.OPTYPE, name)
    for name in ("CONCAT", "SPLIT", "ELEMENTWISE", "RESHAPE", "UNBIND", "EXPAND", "SLICE")
    if hasattr(tp.ops.OPTYPE, name)
)
_ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


class DeriveTimeout(BaseException):
    """Raised inside a time-limited section when its time is up.

    A ``BaseException`` so that Torch-Pruning's own ``except Exception`` cannot swallow it.
    """


class GraphError(RuntimeError):
    """Torch-Pruning failed; ``groups`` holds the groups found before it did."""

    def __init__(self, message: str, groups: list[ChannelGroup]) -> None:
        super().__init__(message)
        self.groups = groups


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`DeriveTimeout` in the block after ``seconds`` (main thread, Unix only).

    Elsewhere, or with ``seconds=None``, the block runs without a limit.
    """
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return
    assert seconds is not None

    def expire(signum: int, frame: object) -> None:
        raise DeriveTimeout(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    start = time.monotonic()
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:  # give back a timer someone else had set
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-3))


@dataclasses.dataclass(frozen=True)
class PruneOp:
    """One layer dimension a group touches.

    Attributes:
        target: Qualified name of the module (or unwrapped parameter) in the teacher.
        handler: Torch-Pruning's function that removes indices along that dimension.
        pruning_dim: Dimension the handler works on (Torch-Pruning's ``pruning_dim``).
        is_parameter: Whether ``target`` names an ``nn.Parameter`` rather than a module.
        idxs: Indices along the dimension, in the teacher's numbering.
        roots: For each index, the group channel it belongs to.
    """

    target: str
    handler: Callable[..., Any]
    pruning_dim: int
    is_parameter: bool
    idxs: np.ndarray
    roots: np.ndarray

    @property
    def key(self) -> tuple[str, int, int, int]:
        """Identifies the (layer, dimension) so ops from several groups can be merged."""
        func = getattr(self.handler, "__func__", self.handler)
        owner = getattr(self.handler, "__self__", None)
        return (self.target, id(func), id(owner), self.pruning_dim)


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be kept or removed together.

    Attributes:
        root: Name of the first layer (in module order) whose outputs form the group.
        channels: Number of channels in the teacher.
        members: Names of every layer whose outputs belong to the group.
        ops: What removing channels of the group does to each layer.
        ranking: Channel indices, most important first (group L2 magnitude).
    """

    root: str
    channels: int
    members: tuple[str, ...]
    ops: tuple[PruneOp, ...]
    ranking: tuple[int, ...]

    def removed(self, keep: int) -> np.ndarray:
        """Channels removed when the ``keep`` most important ones stay."""
        return np.sort(np.asarray(self.ranking[keep:], dtype=np.int64))


def _output_layers(graph: tp.DependencyGraph) -> list[nn.Module]:
    """Layers whose output channels are the model's outputs (the classifier)."""
    finals: list[nn.Module] = []
    frontier = [node for node in graph.module2node.values() if not node.outputs]
    seen: set[int] = set()
    while frontier:
        node = frontier.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, _ROOT_TYPES):
            finals.append(node.module)
        else:
            frontier.extend(node.inputs)
    return finals


def _blocking_reason(group: Any, names: dict[nn.Module, str]) -> str | None:
    """Why a group cannot be thinned channel by channel, or None if it can."""
    for dep, _ in group:
        module = dep.target.module
        if (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
                and module.groups != module.in_channels):
            return f"grouped convolution {names.get(module, module)} (groups={module.groups})"
    return None


def find_channel_groups(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    ignored: Iterable[nn.Module] = (),
    time_limit_s: float | None = None,
) -> list[ChannelGroup]:
    """Trace ``model`` once and return its groups of coupled output channels.

    The layers that produce the model's outputs, and any layer in ``ignored``, keep
    their output channels; so does every layer coupled with them. The model is
    traced in eval mode and left as it was.

    Args:
        model: The teacher. Not modified.
        example_input: A batch the model accepts.
        ignored: Layers whose output channels must not change.
        time_limit_s: Seconds Torch-Pruning may take; None for no limit.

    Raises:
        GraphError: If Torch-Pruning fails or runs out of time; it carries the
            groups found before that, each of which is safe to use on its own.

    Returns:
        The groups, in the module order of their root layers.
    """
    module_names = {module: name for name, module in model.named_modules()}
    param_names = {param: name for name, param in model.named_parameters()}
    groups: list[ChannelGroup] = []
    with eval_mode(model):
        try:
            with time_limit(time_limit_s):
                graph = tp.DependencyGraph().build_dependency(
                    model, example_inputs=example_input, verbose=False
                )
                frozen = list(ignored) + _output_layers(graph)
                importance = tp.importance.GroupMagnitudeImportance(p=2)
                for group in graph.get_all_groups(ignored_layers=frozen,
                                                  root_module_types=_ROOT_TYPES):
                    root = module_names.get(group[0].dep.target.module, "?")
                    try:
                        reason = _blocking_reason(group, module_names)
                        if reason is None:
                            groups.append(
                                _record(group, root, module_names, param_names, importance))
                    except Exception as exc:  # Torch-Pruning's own errors on one group
                        reason = f"{type(exc).__name__}: {exc}"
                    if reason is not None:
                        logger.info("channels of %s stay fixed: %s", root, reason)
        except (Exception, DeriveTimeout) as exc:
            raise GraphError(f"Torch-Pruning could not analyse the graph "
                             f"({type(exc).__name__}: {exc}); {len(groups)} groups were found "
                             "before it stopped", groups) from exc
    order = {name: i for i, name in enumerate(module_names.values())}
    return sorted(groups, key=lambda g: order[g.root])



def _record(
    group: Any,
    root: str,
    module_names: dict[nn.Module, str],
    param_names: dict[nn.Parameter, str],
    importance: tp.importance.Importance,
) -> ChannelGroup:
    ops: list[PruneOp] = []
    members: list[str] = []
    for item in group.items:
        dep, target = item.dep, item.dep.target
        if target.type in _VIRTUAL_TYPES:
            continue
        is_parameter = target.type == tp.ops.OPTYPE.PARAMETER
        name = (param_names if is_parameter else module_names).get(target.module)
        if name is None:
            continue
        plain = np.asarray(item.idxs, dtype=np.int64)
        roots = np.asarray(getattr(item, "root_idxs", item.idxs), dtype=np.int64)
        op = PruneOp(name, dep.handler, target.pruning_dim, is_parameter, plain, roots)
        ops.append(op)
        if not is_parameter and _is_out_channel_op(dep.handler) and name not in members:
            members.append(name)
    channels = len(group[0].idxs)
    order = {name: i for i, name in enumerate(module_names.values())}
    if members:
        root = min(members, key=order.__getitem__)
    with torch.no_grad():
        scores = importance(group)
    if scores is None or len(scores) != channels:
        ranking: Sequence[int] = range(channels)
    else:
        # Stable sort keeps the teacher's order among equal scores: deterministic.
        ranking = np.argsort(-scores.detach().cpu().numpy(), kind="stable").tolist()
    return ChannelGroup(root, channels, tuple(members), tuple(_dedupe(ops)), tuple(ranking))


def _is_out_channel_op(handler: Callable[..., Any]) -> bool:
    return getattr(handler, "__name__", "") == "prune_out_channels"


def _dedupe(ops: list[PruneOp]) -> list[PruneOp]:
    """Merge ops on the same (layer, dimension): a layer may appear as input and output."""
    merged: dict[tuple[str, int, int, int], PruneOp] = {}
    for op in ops:
        first = merged.get(op.key)
        if first is None:
            merged[op.key] = op
            continue
        pairs = np.unique(np.stack([np.concatenate([first.idxs, op.idxs]),
                                    np.concatenate([first.roots, op.roots])], axis=1), axis=0)
        merged[op.key] = dataclasses.replace(first, idxs=pairs[:, 0], roots=pairs[:, 1])
    return list(merged.values())
