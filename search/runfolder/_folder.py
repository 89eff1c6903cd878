"""Reading a run folder back: config, trial records, teacher, front and pick, and its study."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from protege.common import atomic_write, read_yaml
from protege.search import _attrs as attrs
from protege.search._config import SOURCE_KEYS, Config
from protege.search._profile import TeacherProfile
from protege.search._records import Pick, TrialRecord
from protege.search._storage import open_storage

__all__ = ["RunFolder", "load_run", "read_records", "write_records"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """What a run folder holds, as written by a search.

    Attributes:
        path: The folder.
        config: The resolved config (``config.yaml``).
        source: Where the teacher and data came from: the ``task:``, ``teacher:`` and
            ``data:`` keys of ``config.yaml`` (empty for a run made from Python).
        records: Every trial (``trials.jsonl``), by number.
        summary: ``summary.json``; empty while the search has not finished.
        front: ``pareto.json``: the front's members with their measured latency.
        teacher: The teacher's profile, once the search finished.
        pick: The chosen student after fine-tuning, once the search finished.
        export: ``best/export.json``, written by ``protege export``; empty before.
    """

    path: Path
    config: Config
    source: dict[str, Any]
    records: tuple[TrialRecord, ...]
    summary: dict[str, Any]
    front: tuple[dict[str, Any], ...]
    teacher: TeacherProfile | None
    pick: Pick | None
    export: dict[str, Any]

    def record(self, number: int) -> TrialRecord:
        """The record of trial ``number``.

        Raises:
            ValueError: If the run has no such trial.
        """
        for record in self.records:
            if record.number == number:
                return record
        raise ValueError(f"{self.path}: no trial {number} (trials "
                         f"{self.records[0].number}-{self.records[-1].number})"
                         if self.records else f"{self.path}: no trials yet")

    def open_storage(self) -> optuna.storages.BaseStorage | None:
        """The study storage, or None when its file is not there (it never creates one)."""
        url = self.config.storage
        if url is None:
            if not (self.path / "study.db").is_file():
                return None
        elif url.startswith("journal:"):
            if not Path(url.removeprefix("journal:")).is_file():
                return None
        elif url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
            return None
        return open_storage(url, self.path)

    def open_study(self) -> optuna.Study | None:
        """The Optuna study (to read, not to run), or None where there is none."""
        storage = self.open_storage()
        if storage is None:
            return None
        try:
            return optuna.load_study(study_name=attrs.STUDY_NAME, storage=storage)
        except KeyError:  # e.g. a Ray run made before Ray shared the study
            logger.info("%s: no study named %r in its storage", self.path, attrs.STUDY_NAME)
            return None


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Only the fields ``cls`` has: files written by newer versions still load."""
    names = {field.name for field in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def _json(path: Path, default: Any) -> Any:
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc


def read_records(path: Path) -> list[TrialRecord]:
    """The records of ``trials.jsonl`` (empty when the file does not exist)."""
    if not path.is_file():
        return []
    return [TrialRecord.from_dict(json.loads(line))
            for line in path.read_text().splitlines() if line.strip()]


def write_records(path: Path, records: Sequence[TrialRecord]) -> None:
    """Write ``trials.jsonl`` atomically: one JSON object per trial."""
    with atomic_write(path) as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict()) + "\n")


def load_run(path: str | Path) -> RunFolder:
    """Read the run folder ``path``.

    Raises:
        FileNotFoundError: If ``path`` is not a run folder (no ``config.yaml``).
        ValueError: If one of its files cannot be read.
    """
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} is not a protege run folder (no config.yaml)")
    summary = _json(path / "summary.json", {})
    teacher = summary.get("teacher")
    pick = summary.get("pick")
    data = read_yaml(path / "config.yaml")
    return RunFolder(
        path=path,
        config=Config.from_dict(data).resolve(),
        source={key: data[key] for key in SOURCE_KEYS if key in data},
        records=tuple(read_records(path / "trials.jsonl")),
        summary=summary,
        front=tuple(_json(path / "pareto.json", [])),
        teacher=TeacherProfile(**_known(TeacherProfile, teacher)) if teacher else None,
        pick=Pick(**_known(Pick, pick)) if pick else None,
        export=_json(path / "best" / "export.json", {}),
    )

