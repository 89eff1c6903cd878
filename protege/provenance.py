"""What made a result: the code (commit, dirty tree, package versions), the resolved config
and the machine. Every record and result file carries it, so a comparison can refuse to
mix records of different code.

Part of the bottom layer: imports no other protege module.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "code_provenance", "config_hash", "describe_code", "machine",
           "provenance", "same_code"]

PACKAGES = ("protege", "torch", "optuna", "pytorch-lightning", "torch-pruning")
"""Distributions whose versions a record names."""

_SOURCE = Path(__file__).resolve().parents[1]
"""The checkout protege runs from (its git work tree, when it is one)."""
_RESULTS = "experiments/results"
"""Where benchmarks write their tables (outside what ``dirty`` looks at)."""


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_SOURCE), *args], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def code_provenance() -> dict[str, Any]:
    """``commit`` (None outside a git checkout), ``dirty`` (tracked files changed since
    it, result tables under ``experiments/results`` aside; None when unknown), ``diff``
    (a hash of those changes, so two results of the same uncommitted code still match)
    and the ``versions`` of :data:`PACKAGES`.

    Taken once per process: the code a process runs does not change under it.
    """
    commit = _git("rev-parse", "HEAD")
    # Result files a benchmark is rewriting are not code: they do not make the tree dirty.
    code = (".", f":(exclude){_RESULTS}")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", *code) if commit \
        else None
    diff = _git("diff", "HEAD", "--", *code) if status else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "diff": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None,
            "versions": {name: _version(name) for name in PACKAGES}}


@functools.lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """The CPU model, its logical cores, torch's threads and the accelerator, if any."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    accelerator = None
    try:
        import torch

        threads = torch.get_num_threads()
        if torch.cuda.is_available():
            accelerator = torch.cuda.get_device_name(0)
    except ImportError:
        threads = None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads,
            "accelerator": accelerator, "host": platform.node()}


def config_hash(config: Mapping[str, Any] | None) -> str | None:
    """A short SHA-256 of a config's canonical JSON (None without a config)."""
    if config is None:
        return None
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def provenance(config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything a record carries about what made it: :func:`code_provenance`, the
    ``config_hash`` of ``config`` and the :func:`machine`."""
    return {**code_provenance(), "config_hash": config_hash(config), "machine": machine()}


def same_code(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two provenances name the same code and config: commit, uncommitted
    changes, package versions and config hash (an installed protege has no commit: its
    version stands for the code). A record without provenance matches nothing."""
    if not a or not b:
        return False
    return all(a.get(k) == b.get(k) for k in ("commit", "dirty", "diff", "versions",
                                               "config_hash"))


def describe_code(stamp: Mapping[str, Any] | None = None) -> str:
    """One line naming the code of ``stamp`` (default: this process's), e.g. ``commit
    0200d8e1f2 (+ uncommitted changes 64700ee49e), protege 0.2.0, torch 2.14.1``."""
    stamp = stamp if stamp is not None else code_provenance()
    versions = stamp.get("versions") or {}
    commit = stamp.get("commit")
    where = (f"commit {commit[:10]}" + (f" (+ uncommitted changes {stamp.get('diff')})"
                                        if stamp.get("dirty") else "")
             if commit else "no git checkout")
    return f"{where}, " + ", ".join(f"{name} {version}" for name, version in versions.items()
                                    if name in ("protege", "torch", "optuna") and version)
