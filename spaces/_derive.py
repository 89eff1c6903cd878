"""``derive``: the search space of students, read off the teacher's graph."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from protege.common import describe
from protege.spaces._blocks import ResidualBlock, TeacherTrace, trace_teacher
from protege.spaces._checks import clone, kept_buffers, mode_batch, student_fault
from protege.spaces._groups import ChannelGroup, GraphError, find_channel_groups
from protege.spaces._lowrank import MIN_RANK_PARAMS, RANK_OPTIONS, rank_candidates
from protege.spaces._space import SearchSpace, SpaceParts, kept_channels

__all__ = ["LEVELS", "TIME_LIMIT_S", "WIDTH_OPTIONS", "derive"]

logger = logging.getLogger(__name__)

WIDTH_OPTIONS: tuple[float, ...] = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
"""Width multipliers offered per group of coupled channels, coarse enough to search."""

LEVELS = (1, 2, 3)
"""Space levels: 1 = width; 2 = width + depth; 3 = width + depth + low-rank decomposition."""

TIME_LIMIT_S = 120.0
"""Seconds the channel-coupling analysis (Torch-Pruning) may take before it is cut short."""


def derive(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    level: int = 1,
    ignored: Iterable[str] = (),
    width_options: Sequence[float] = WIDTH_OPTIONS,
    options: Mapping[str, Sequence[Any]] | None = None,
    allow_empty_stages: bool = False,
    min_rank_params: int = MIN_RANK_PARAMS,
    time_limit_s: float | None = TIME_LIMIT_S,
) -> SearchSpace:
    """Derive the search space of students from the teacher's graph.

    The teacher runs once under hooks (residual blocks, layer use) and is traced
    once by Torch-Pruning (coupled channels). Level 1 offers a width multiplier per
    group of coupled channels; level 2 adds ``depth.<block>`` for every module whose
    output is ``x + f(x)``; level 3 adds ``rank.<layer>`` for every large ungrouped
    convolution or linear layer, with the ratios of :data:`RANK_OPTIONS` that
    reduce its MACs. The classifier's outputs and the input's channels never change.

    A part of the graph Torch-Pruning cannot cut (or cannot analyse in
    ``time_limit_s``) keeps its width, with one warning. A choice is offered only
    where its options build different students (a width option is dropped when it
    keeps as many channels as another, or a count GroupNorm cannot divide). The
    teacher is traced in eval and training mode; where training mode runs layers that
    eval mode does not (an auxiliary head), channels are coupled in the training
    graph. A few extreme students (every choice at its least option, at its second
    least, ...) are built and run in both modes; each choice that breaks one is
    frozen at the teacher's value, and one warning names it, the module that failed,
    the mode and the error.

    Args:
        model: The trained teacher. It is not modified.
        example_input: A batch the teacher accepts (one sample is enough).
        level: Size of the space; see :data:`LEVELS`.
        ignored: Names of layers whose output channels must stay as they are.
        width_options: Multipliers offered per group (must include 1.0).
        options: Option lists overriding the derived ones, keyed by choice name or
            glob pattern (``"width.*"``, ``"rank.layer4.*"``); the first matching
            key wins.
        allow_empty_stages: Let a stage drop all of its blocks.
        min_rank_params: Weights a layer needs to be offered a rank choice.
        time_limit_s: Seconds Torch-Pruning may take; None for no limit.

    Raises:
        ValueError: For an unknown level, a layer name that is not in the model,
            an override that matches no choice or offers bad values, or a teacher
            whose graph yields no choice at all.
        ValueError: If the teacher cannot run in training mode, or returns
            something else there than the tensor it returns in eval mode (one line
            naming the module or the output, and the mode).
        RuntimeError: If the teacher's forward pass fails on ``example_input``
            (the message names the module and the error).
    """
    if level not in LEVELS:
        raise ValueError(f"space level {level} is not available; available: {list(LEVELS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"the teacher must be a torch.nn.Module, got {type(model).__name__}")
    modules = dict(model.named_modules())
    ignored = list(ignored)
    for name in ignored:
        if name not in modules:
            raise ValueError(f"ignored layer {name!r} is not in the model")
    width = tuple(sorted(float(w) for w in width_options))
    if not width or width[0] <= 0 or width[-1] != 1.0:
        raise ValueError(f"width options must be in (0, 1] and include 1.0, got {width}")
    template = clone(model).eval()
    for param in template.parameters():
        param.requires_grad_(True)
    trace = trace_teacher(template, example_input)
    side = _training_only(template, example_input, trace)
    template_modules = dict(template.named_modules())
    try:
        with kept_buffers(template):
            groups = find_channel_groups(template, mode_batch(example_input, bool(side)),
                                         ignored=[template_modules[n] for n in ignored],
                                         time_limit_s=time_limit_s, training=bool(side),
                                         side_outputs=side)
    except GraphError as exc:
        logger.warning("%s; the rest of the widths stay fixed", exc)
        groups = exc.groups
    parts, choices = _choices(template, trace, groups, level=level, width=width,
                              ignored=ignored, min_rank_params=min_rank_params,
                              allow_empty_stages=allow_empty_stages)
    if options:
        choices = _override(choices, options)
    _check_stages(parts, choices)
    if not choices:
        raise ValueError("found no choice in the teacher's graph: no group of channels that "
                         "can be thinned" + (", no residual block, no large layer"
                                             if level > 1 else "")
                         + "; a student needs hidden conv or linear layers to shrink (check "
                         "space.ignored and space.options, or try a higher level)")
    space = SearchSpace(teacher=template, example_input=example_input, level=level,
                        parts=parts, choices=choices)
    space = _freeze_broken(space, trace)
    logger.info("derived %s from %d modules", space.kinds(), len(modules))
    return space


def _training_only(template: nn.Module, example_input: torch.Tensor,
                   trace: TeacherTrace) -> tuple[str, ...]:
    """Modules that run in training mode only; refuse a teacher that cannot be trained.

    Raises:
        ValueError: If the forward pass fails in training mode, or gives something
            else than the eval-mode tensor (a tuple of logits and auxiliary logits).
    """
    with kept_buffers(template):
        try:
            train = trace_teacher(template, example_input, training=True)
        except RuntimeError as exc:
            raise ValueError(f"no student of this teacher can be trained: {exc}") from exc
    if trace.output_kind == "Tensor" and (train.output_kind != "Tensor"
                                          or train.output_shape[1:] != trace.output_shape[1:]):
        got = (f"a {train.output_kind}" if train.output_kind != "Tensor"
               else f"shape {train.output_shape}")
        raise ValueError(
            f"the teacher {type(template).__name__} returns {got} in training mode but a "
            f"tensor of shape {trace.output_shape} in eval mode; students are trained on "
            "one tensor of logits, so make it return them in both modes (torchvision's "
            "inception_v3 and googlenet: aux_logits=False)")
    return tuple(name for name in train.layers if name not in trace.layers)


def _width_options(group: ChannelGroup, width: tuple[float, ...],
                   modules: Mapping[str, nn.Module]) -> tuple[tuple[float, ...], str | None]:
    """The multipliers that build different students of ``group``, or why there are none.

    Options that keep the same number of channels are offered once (the largest
    multiplier stands for them); a GroupNorm over the group's channels keeps only
    counts its ``num_groups`` divides.
    """
    sizes = {name: _out_size(modules[name]) for name in group.members if name in modules}
    single = [name for name, size in sizes.items() if size == 1]
    wide = {name: size for name, size in sizes.items() if size is not None and size > 1}
    if single and wide:
        name, size = next(iter(wide.items()))
        return (), (f"the single output channel of {single[0]} is broadcast over the "
                    f"{size} channels of {name}; Torch-Pruning couples them as one group")
    divisors = {module.num_groups for op in group.ops
                if isinstance(module := modules.get(op.target), nn.GroupNorm)
                and module.num_channels == group.channels}
    by_count: dict[int, float] = {}
    for value in width:
        kept = kept_channels(group.channels, value)
        if all(kept % divisor == 0 for divisor in divisors):
            by_count[kept] = value  # ascending: the largest multiplier of a count wins
    options = tuple(sorted(by_count.values()))
    if len(options) < 2:
        return (), (f"every width option keeps {group.channels} channel(s)" if not divisors
                    else f"no width option keeps a channel count GroupNorm"
                         f"({sorted(divisors)}) divides")
    return options, None


def _out_size(module: nn.Module) -> int | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return int(module.out_channels)
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    return None


def _choices(
    template: nn.Module,
    trace: TeacherTrace,
    groups: Sequence[Any],
    *,
    level: int,
    width: tuple[float, ...],
    ignored: Sequence[str],
    min_rank_params: int,
    allow_empty_stages: bool,
) -> tuple[SpaceParts, dict[str, tuple[Any, ...]]]:
    choices: dict[str, tuple[Any, ...]] = {}
    modules = dict(template.named_modules())
    group_of = {}
    for group in groups:
        options, reason = _width_options(group, width, modules)
        if reason is not None:
            logger.info("channels of %s stay fixed: %s", group.root, reason)
            continue
        group_of[f"width.{group.root}"] = group
        choices[f"width.{group.root}"] = options
    blocks: dict[str, ResidualBlock] = {}
    if level >= 2:
        blocks = {f"depth.{block.name}": block for block in trace.blocks}
        choices.update({name: (False, True) for name in blocks})
    members = [tuple(name for name, block in blocks.items() if block.stage == stage)
               for stage in sorted(trace.open_stages)]
    stages: tuple[tuple[str, ...], ...] = ()
    if not allow_empty_stages:
        # The only block of a stage that must keep one is no choice at all.
        for lonely in (stage[0] for stage in members if len(stage) == 1):
            del blocks[lonely], choices[lonely]
        stages = tuple(stage for stage in members if len(stage) > 1)
    ranks = {}
    if level >= 3:
        used = {name: module for name, module in template.named_modules()
                if name in trace.layers and name not in ignored}
        for candidate in rank_candidates(used, options=RANK_OPTIONS, min_params=min_rank_params):
            ranks[f"rank.{candidate.name}"] = candidate.name
            choices[f"rank.{candidate.name}"] = candidate.options
    return SpaceParts(groups=group_of, blocks=blocks, ranks=ranks, stages=stages), choices


def _override(
    choices: dict[str, tuple[Any, ...]], options: Mapping[str, Sequence[Any]]
) -> dict[str, tuple[Any, ...]]:
    """Apply per-choice option lists; the first key that matches a choice wins."""
    unmatched = [key for key in options if not any(fnmatch.fnmatchcase(name, key)
                                                  for name in choices)]
    if unmatched:
        raise ValueError(f"option overrides match no choice: {unmatched}; choices look like "
                         f"{list(choices)[:5]}")
    result = dict(choices)
    for name in choices:
        key = next((key for key in options if fnmatch.fnmatchcase(name, key)), None)
        if key is not None:
            result[name] = _checked(name, options[key])
    return result


def _checked(name: str, values: Sequence[Any]) -> tuple[Any, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"options for {name} must be a non-empty list, got {values!r}")
    if name.startswith("depth."):
        if not all(isinstance(v, bool) for v in values):
            raise ValueError(f"options for {name} must be booleans, got {list(values)}")
        return tuple(sorted(set(values)))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
               for v in values):
        raise ValueError(f"options for {name} must be numbers in (0, 1], got {list(values)}")
    return tuple(sorted({float(v) for v in values}))


def _check_stages(parts: SpaceParts, choices: Mapping[str, tuple[Any, ...]]) -> None:
    for stage in parts.stages:
        if not any(True in choices[name] for name in stage):
            raise ValueError(f"options drop every block of the stage {list(stage)}; "
                             "pass allow_empty_stages=True to allow that")


def _freeze_broken(space: SearchSpace, trace: TeacherTrace) -> SearchSpace:
    """Freeze the choices that break an extreme student; warn once, naming them.

    The extreme students set every choice to its least option, then to its second
    least, and so on (the teacher's value once a choice has no more); each is run in
    eval and training mode. Choices that only fail in combination with others are
    not all found this way; when a choice was frozen, the smallest student is checked
    once more at the end (else the first extreme student was it), and derive raises
    rather than hand out a student that crashes.
    """
    reasons: dict[str, str] = {}
    levels = max((len(options) for options in space.choices.values()), default=1) - 1
    for level in range(levels):
        choices = space.choices

        def pick(name: str, level: int = level, choices: dict = choices) -> Any:
            return choices[name][min(level, len(choices[name]) - 1)]

        names = [name for name, options in space.choices.items() if len(options) - 1 > level]
        if names:
            _find_broken(space, names, pick, trace, reasons)
        if reasons:
            space = space.without(list(reasons))
    if reasons:
        logger.warning("%d choices stay at the teacher's value because the student breaks "
                       "without them: %s", len(reasons),
                       "; ".join(f"{name} ({why})" for name, why in list(reasons.items())[:10]))
    if reasons or not levels:  # else the first extreme student was the smallest, and it ran
        reason = _fails(space, space.smallest(), trace)
        if reason is not None:
            raise RuntimeError(f"the smallest student of this teacher fails: {reason}")
    return space


def _find_broken(space: SearchSpace, names: list[str], pick: Callable[[str], Any],
                 trace: TeacherTrace, reasons: dict[str, str]) -> None:
    """Bisect ``names``: which choices break the student when set to ``pick(name)``.

    A half whose choices together build a working student is cleared at once, so a
    few culprits among many choices cost a logarithmic number of students.
    """
    arch = space.largest() | {name: pick(name) for name in names}
    reason = _fails(space, arch, trace)
    if reason is None:
        return
    if len(names) == 1:
        reasons[names[0]] = reason
        return
    middle, before = len(names) // 2, len(reasons)
    _find_broken(space, names[:middle], pick, trace, reasons)
    _find_broken(space, names[middle:], pick, trace, reasons)
    if len(reasons) == before:  # each half works alone: they fail only together
        reasons.update({name: f"together with {len(names) - 1} others: {reason}"
                        for name in names})


def _fails(space: SearchSpace, arch: dict[str, Any], trace: TeacherTrace) -> str | None:
    """Why the student ``arch`` fails in eval or training mode, or None."""
    try:
        student = space.materialize(arch)
    except Exception as exc:
        return f"building it: {describe(exc)}"
    # a teacher that returns no tensor has no shape to compare: the student need only run
    shape = trace.output_shape if trace.output_kind == "Tensor" else None
    return student_fault(student, space.example_input, shape)
