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

    Lightning's per-fit banners are held back where the fits happen
    (``protege.distill.train_student``), so no other library's logger is touched here.
    """
    logging.getLogger(_ROOT).setLevel(level)
