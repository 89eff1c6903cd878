"""One-line descriptions of exceptions, for records, warnings and the CLI."""

from __future__ import annotations

__all__ = ["describe", "first_line"]


def first_line(exc: BaseException) -> str:
    """The first line of the exception's message ('' when it has none)."""
    return (str(exc).strip().splitlines() or [""])[0]


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    return f"{type(exc).__name__}: {first_line(exc)}"
