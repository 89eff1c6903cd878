"""Reading a run folder back: config, trial records, teacher, front and pick, and its study."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import optuna

from protege.search._config import Config, load_config
from protege.search._records import Pick, TeacherProfile, TrialRecord
from protege.search._storage import open_storage

__all__ = ["RunFolder", "load_run", "read_records", "trial_outcome"]

logger = logging.getLogger(__name__)

STUDY_NAME = "protege"


@dataclasses.dataclass(frozen=True)
class RunFolder:
    """What a run folder holds, as written by a search.

    Attributes:
        path: The folder.
        config: The resolved config (``config.yaml``).
        records: Every trial (``trials.jsonl``), by number.
        summary: ``summary.json``; empty while the search has not finished.
        front: ``pareto.json``: the front's members with their measured latency.
        teacher: The teacher's profile, once the search finished.
        pick: The chosen student after fine-tuning, once the search finished.
        export: ``best/export.json``, written by ``protege export``; empty before.
    """

    path: Path
    config: Config
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
            return optuna.load_study(study_name=STUDY_NAME, storage=storage)
        except KeyError:  # e.g. a Ray run, whose searcher keeps a study of its own
            logger.info("%s: no study named %r in its storage", self.path, STUDY_NAME)
            return None


def trial_outcome(record: TrialRecord) -> str:
    """What became of a trial, in one word.

    ``trained``; ``reused`` (the same student as an earlier trial); ``rejected`` (over a
    hard limit, never trained); ``skipped`` (a rule judged it not worth training: the
    accuracy predictor, the hypervolume gain); ``stopped`` (during training, by a rule
    or a scheduler); ``failed``; or ``running``.
    """
    if record.state == "complete":
        return "reused" if record.duplicate_of is not None else "trained"
    if record.state == "pruned":
        if (record.pruned_reason or "").startswith(("macs", "params", "latency")):
            return "rejected"
        return "stopped" if record.history or record.train_seconds else "skipped"
    return "failed" if record.state == "failed" else "running"


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
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            data = _known(TrialRecord, json.loads(line))
            data["history"] = tuple(data.get("history") or ())
            records.append(TrialRecord(**data))
    return records


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
    return RunFolder(
        path=path,
        config=load_config(path / "config.yaml"),
        records=tuple(read_records(path / "trials.jsonl")),
        summary=summary,
        front=tuple(_json(path / "pareto.json", [])),
        teacher=TeacherProfile(**_known(TeacherProfile, teacher)) if teacher else None,
        pick=Pick(**_known(Pick, pick)) if pick else None,
        export=_json(path / "best" / "export.json", {}),
    )

