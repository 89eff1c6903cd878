"""protege's library logger. Library code logs; the CLI decides what is shown."""

from __future__ import annotations

import logging

__all__ = ["get_logger", "set_verbosity"]

_ROOT = "protege"


def get_logger(name: str = _ROOT) -> logging.Logger:
    """The logger of a protege module."""
    return logging.getLogger(name)


def set_verbosity(level: int | str) -> None:
    """Set the level of protege's loggers, e.g. ``logging.INFO`` or ``"WARNING"``.

    Lightning's per-fit banners ("GPU available: ...") are lowered to WARNING with
    it, since every trial starts a fit.
    """
    logging.getLogger(_ROOT).setLevel(level)
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
