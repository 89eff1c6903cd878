"""Run a module in eval mode and give every submodule back its own mode afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode, then restore each submodule's own ``training`` flag.

    ``model.train(was_training)`` would not do: it sets every child alike, so a
    teacher with frozen BatchNorm layers (eval inside a training model) would change.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
