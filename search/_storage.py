"""Where a study lives: SQLite in the run folder, a shared RDB, or a journal file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna

__all__ = ["open_storage"]

logger = logging.getLogger(__name__)


def open_storage(url: str | None, out: Path) -> optuna.storages.BaseStorage:
    """Open the study storage named by ``url``.

    Args:
        url: ``None`` for ``sqlite:///<out>/study.db``; an SQLAlchemy URL
            (``sqlite:///...`` for one writer, ``postgresql://...`` for many); or
            ``journal:PATH`` for Optuna's journal file, which several processes
            on one file system may share.
        out: The run folder.

    Raises:
        ValueError: If the storage cannot be reached or the URL is not understood.
    """
    if url is None:
        url = f"sqlite:///{(out / 'study.db').resolve()}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"storage {url!r} is not a URL: use sqlite:///PATH, "
                         "postgresql://USER@HOST/DB or journal:PATH")
    kwargs: dict[str, object] = {}
    if url.startswith("sqlite"):
        # SQLite serialises writers; wait for the lock instead of failing at once.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        kwargs.update(heartbeat_interval=30, grace_period=120)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)  # type: ignore[arg-type]
    except Exception as exc:  # SQLAlchemy raises many kinds; all mean "cannot use it"
        raise ValueError(f"cannot open storage {url}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]}") from exc
