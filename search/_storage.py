"""Where a study lives: SQLite in the run folder, a shared RDB, or a journal file.

Also what keeps a shared study whole when processes die or collide: trials left
running by a dead process are failed (so their slot is retried), and SQLite's
"database is locked" becomes an error that says what to use instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from protege.common import describe
from protege.search import _attrs as attrs

__all__ = ["StorageError", "fail_dead_trials", "open_storage", "storage_errors",
           "worker_id"]

logger = logging.getLogger(__name__)

_ORPHAN_AFTER_S = 60.0
"""A running trial that names no process is taken as dead after this long."""
_MULTI_WRITER = ("several processes writing one SQLite file wait for each other and fail "
                 "with 'database is locked' under load: for several workers use PostgreSQL "
                 "(--storage postgresql://USER@HOST/DB) or a journal file "
                 "(--storage journal:RUN_FOLDER/study.journal)")


class StorageError(ValueError):
    """The study storage cannot be used: unreachable, outside the run folder, or locked."""


def worker_id() -> str:
    """``host:pid`` of this process, as recorded on the trials it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _inside(path: Path, out: Path, url: str) -> Path:
    """``path`` resolved; it must lie inside the run folder ``out``."""
    resolved = path.expanduser().resolve()
    root = out.resolve()
    if resolved != root and root not in resolved.parents:
        raise StorageError(f"storage {url} writes {resolved}, outside the run folder {root}: "
                           "protege writes only inside the run folder; put the file under it "
                           "(e.g. journal:<run folder>/study.journal) or use a PostgreSQL URL")
    return resolved


def _sqlite_path(url: str) -> str | None:
    """The file of an ``sqlite:///PATH`` URL (None for an in-memory database)."""
    rest = url.split(":///", 1)[1] if ":///" in url else ""
    path = rest.split("?", 1)[0]
    return path if path and path != ":memory:" else None


def open_storage(url: str | None, out: Path) -> optuna.storages.BaseStorage:
    """Open the study storage named by ``url``.

    A file storage (``journal:PATH``, ``sqlite:///PATH``) must lie inside the run
    folder: a config that names a path elsewhere (``journal:~/.bashrc``) is refused,
    so no config can make protege write outside the run folder.

    Args:
        url: ``None`` for ``sqlite:///<out>/study.db``; an SQLAlchemy URL
            (``sqlite:///...`` for one writer, ``postgresql://...`` for many); or
            ``journal:PATH`` for Optuna's journal file, which several processes
            on one file system may share. An SQLite URL may set the lock wait,
            e.g. ``sqlite:///run/study.db?timeout=5`` (default 60 s).
        out: The run folder.

    Raises:
        StorageError: If the storage cannot be reached, the URL is not understood or
            a file storage lies outside the run folder.
    """
    if url is None:
        url = f"sqlite:///{(out / 'study.db').resolve()}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = _inside(Path(url.removeprefix("journal:")), out, url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise StorageError(f"storage {url!r} is not a URL: use sqlite:///PATH, "
                           "postgresql://USER@HOST/DB or journal:PATH")
    shown = _hide_password(url)
    url = _with_driver(url)
    kwargs: dict[str, object] = {}
    if url.startswith("sqlite"):
        file = _sqlite_path(url)
        if file is not None:
            _inside(Path(file), out, url).parent.mkdir(parents=True, exist_ok=True)
        if "timeout=" not in url:
            # SQLite serialises writers; wait for the lock instead of failing at once.
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    else:
        # A worker that dies leaves its trial running; the heartbeat lets others fail it.
        kwargs.update(heartbeat_interval=30, grace_period=120)
    last: Exception | None = None
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)  # type: ignore[arg-type]
        except Exception as exc:  # SQLAlchemy raises many kinds; all mean "cannot use it"
            last = exc
            # Workers that start together race to create the tables; the loser retries.
            if not _is_race(exc):
                break
            time.sleep(0.5 * (attempt + 1))
    assert last is not None
    if is_locked(last):
        raise StorageError(f"SQLite storage {shown} is locked by another process: "
                           f"{_MULTI_WRITER}") from last
    if isinstance(last, ImportError):
        raise StorageError(f"cannot open storage {shown}: its database driver is not installed; "
                           "for PostgreSQL: pip install 'protege[postgres]' (psycopg2)") from last
    raise StorageError(f"cannot open storage {shown}: {describe(last)}") from last


def _hide_password(url: str) -> str:
    """The URL as it may be shown in an error: ``user:***@host``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: nothing to hide in it
        return url


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed (SQLAlchemy 2.1 assumes psycopg 3)."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    for module, dialect in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{dialect}://" + url.removeprefix("postgresql://")
    return url


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_race(exc: BaseException) -> bool:
    text = " ".join(str(e) for e in _chain(exc))
    return any(word in text for word in ("already exists", "duplicate key", "IntegrityError",
                                         "UniqueViolation"))


def is_locked(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is SQLite's "database is locked"."""
    return any("database is locked" in str(e) for e in _chain(exc))


@contextlib.contextmanager
def storage_errors(url: str | None) -> Iterator[None]:
    """Turn SQLite's "database is locked" into a :class:`StorageError` that says what to use."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if is_locked(exc):
            where = _hide_password(url) if url else "the run folder's study.db"
            raise StorageError(f"SQLite storage {where} is locked by another process: "
                               f"{_MULTI_WRITER}") from exc
        raise


def warn_if_shared_sqlite(url: str | None) -> None:
    """A worker on SQLite works while writers are few; say what scales."""
    if url is None or url.startswith("sqlite"):
        logger.warning("this worker shares an SQLite storage; %s", _MULTI_WRITER)


def _alive(worker: str) -> bool | None:
    """Whether the process ``host:pid`` runs; None when it is on another host."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _stale_ids(study: optuna.Study) -> set[int]:
    """Ids of running trials whose RDB heartbeat is older than the grace period.

    Optuna's public ``optuna.storages.fail_stale_trials`` fails such trials itself,
    with no way to record why; protege records the reason on each trial first, so it
    asks the storage which trials are stale (private API, pinned by the worker tests).
    """
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if not isinstance(storage, BaseHeartbeat) or not is_heartbeat_enabled(storage):
        return set()
    return set(storage._get_stale_trial_ids(study._study_id))


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail running trials whose process is gone, so their budget slot is run again.

    A trial names its process (``host:pid``) as it starts: one of this host whose
    process no longer exists is dead, as is one that named no process within a
    minute of starting. On an RDB storage (PostgreSQL) a trial of any host is dead
    once its heartbeat is older than the grace period. Each gets its reason in
    the ``error`` attribute before it is marked failed.

    Returns:
        The numbers of the trials marked failed.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    stale = _stale_ids(study)
    failed = []
    now = time.time()
    for trial in running:
        worker = trial.user_attrs.get(attrs.WORKER)
        if trial._trial_id in stale:
            dead = True
            why = f"its process {worker or ''} stopped sending heartbeats (killed, hung or cut off)"
        elif worker is None:
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            dead = now - started > _ORPHAN_AFTER_S
            why = "its process stopped before it started training"
        else:
            dead = _alive(str(worker)) is False
            why = f"its process {worker} stopped while it ran (killed or crashed)"
        if not dead:
            continue
        try:
            # A trial another process runs has no Trial object here: the storage's call
            # is the only way to give it its reason before it is failed.
            study._storage.set_trial_user_attr(trial._trial_id, attrs.REASON, why)
            study._storage.set_trial_user_attr(trial._trial_id, attrs.OUTCOME, "failed")
            study.tell(trial.number, state=TrialState.FAIL)
        except Exception as exc:  # another process failed it first
            logger.debug("trial %d: %s", trial.number, exc)
            continue
        logger.warning("trial %d failed: %s; its slot will be run again", trial.number, why)
        failed.append(trial.number)
    return failed
