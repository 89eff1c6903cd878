"""The bottom layer: small helpers every protege package may import.

Nothing here imports another protege module, Optuna, Lightning or matplotlib, so
``protege.spaces``, ``protege.distill`` and ``protege.estimators`` stay light.

- :func:`atomic_write`: a reader (another worker, a resumed run) never sees half a file.
- :func:`describe`, :func:`first_line`: one-line descriptions of exceptions, for records,
  warnings and the CLI; :func:`describe_value` and :func:`join_few` of values and lists, for
  messages that say what the user handed over.
- :func:`eval_mode`, :func:`in_mode`: run a module in eval (or training) mode, then give
  every submodule back its own mode.
- :func:`module_stack`, :func:`failing_module`: which module was running when a forward
  pass failed, so an error names it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ConfigError", "atomic_write", "describe", "describe_value", "eval_mode",
           "failing_module", "first_line", "in_mode", "join_few", "module_stack", "read_yaml",
           "require"]


@contextlib.contextmanager
def atomic_write(path: str | Path, *, binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` at once.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def first_line(exc: BaseException) -> str:
    """The first line of the exception's message ('' when it has none)."""
    return (str(exc).strip().splitlines() or [""])[0]


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    return f"{type(exc).__name__}: {first_line(exc)}"


def join_few(items: Sequence[str], count: int = 5) -> str:
    """The first ``count`` items joined by commas, then how many more there are."""
    more = f" and {len(items) - count} more" if len(items) > count else ""
    return ", ".join(items[:count]) + more


def describe_value(value: Any) -> str:
    """What a value is, for a message: "a tensor of shape (4, 6)", "a dict with keys x, y",
    "a tuple of 3 (...)"; the first three items of a sequence are described in turn."""
    if hasattr(value, "shape") and not isinstance(value, type):
        kind = "tensor" if type(value).__module__.startswith("torch") else type(value).__name__
        return f"a {kind} of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {join_few(sorted(map(str, value)))}"
    if isinstance(value, (tuple, list)):
        inner = ", ".join(describe_value(v) for v in value[:3])
        more = ", ..." if len(value) > 3 else ""
        return f"a {type(value).__name__} of {len(value)} ({inner}{more})"
    return f"a {type(value).__name__}"


@contextlib.contextmanager
def in_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``model`` in training or eval mode, then restore each submodule's own flag.

    ``model.train(was_training)`` would not do: it sets every child alike, so a
    teacher with frozen BatchNorm layers (eval inside a training model) would change.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, was_training in modes:
            module.training = was_training


def eval_mode(model: nn.Module) -> contextlib.AbstractContextManager[nn.Module]:
    """:func:`in_mode` for eval mode."""
    return in_mode(model, False)


@contextlib.contextmanager
def module_stack(model: nn.Module) -> Iterator[list[str]]:
    """The qualified names of the submodules of ``model`` running now, outermost first.

    Hooks keep the list while the block runs; after a forward pass fails, its last
    name is the innermost module that was running ('' when none was: the top level).
    """
    stack: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def pre(_module: nn.Module, _args: Any, name: str = name) -> None:
            stack.append(name)

        def post(_module: nn.Module, _args: Any, _output: Any, name: str = name) -> None:
            if stack and stack[-1] == name:
                stack.pop()

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def failing_module(model: nn.Module, example_input: Any) -> tuple[str, Exception]:
    """Run ``model`` once in eval mode, under ``no_grad``, expecting it to fail.

    Returns:
        The innermost module running when it failed ('' for the top level) and the error.

    Raises:
        AssertionError: If the forward pass does not fail.
    """
    import torch

    with module_stack(model) as stack:
        try:
            with torch.no_grad(), eval_mode(model):
                model(example_input)
        except Exception as exc:
            return (stack[-1] if stack else ""), exc
    raise AssertionError(f"{type(model).__name__} ran: it was expected to fail")


class ConfigError(ValueError):
    """A configuration key is unknown or its value is invalid."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` ``"key: message"`` unless ``ok``: every config check's form."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, read with the safe loader.

    Raises:
        ConfigError: If the file is missing, not valid YAML (with the line and column),
            or not a mapping at the top level.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data
