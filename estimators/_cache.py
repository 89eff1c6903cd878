"""The latency predictors' disk cache: one folder per machine and settings, JSON files
that concurrent writers merge under a lock and replace atomically."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from protege.common import atomic_write
from protege.estimators._timing import machine_fingerprint

__all__ = ["cache_folder", "default_latency_cache", "merge_json", "read_json"]

logger = logging.getLogger(__name__)


def default_latency_cache() -> Path:
    """``$PROTEGE_CACHE_DIR/latency`` (default ``~/.cache/protege/latency``)."""
    root = os.environ.get("PROTEGE_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "protege") / "latency"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("ignoring unreadable latency cache %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=0, sort_keys=True)


def merge_json(path: Path, new: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``new`` to the JSON object at ``path`` under a lock; returns the merged object."""
    with _locked(path.parent):
        merged = read_json(path)
        merged.update(new)
        _write_json(path, merged)
    return merged


def cache_folder(cache_dir: str | Path | None, *, threads: int, batch_size: int, runtime: str,
                 precision: str = "fp32") -> Path:
    """The folder of this machine's figures for these settings under ``cache_dir``
    (default :func:`default_latency_cache`)."""
    root = Path(cache_dir) if cache_dir is not None else default_latency_cache()
    return root / machine_fingerprint(threads=threads, batch_size=batch_size, runtime=runtime,
                                      precision=precision)
