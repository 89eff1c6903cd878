"""Saving the pick (architecture JSON + state dict) and rebuilding it from its teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protege.common import atomic_write
from protege.spaces import Architecture, SearchSpace, derive

__all__ = ["load_student", "save_student", "write_json"]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so a crash never leaves half a file."""
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")


def save_student(folder: Path, student: nn.Module, arch: Architecture, space: SearchSpace,
                 *, derive_kwargs: dict[str, Any] | None = None, **extra: Any) -> None:
    """Write ``arch.json`` (what rebuilds the student) and ``student.pt`` (its state dict).

    ``arch.json`` keeps every option list of the space, so the same space (and so
    the same student) is derived again from the teacher whatever the defaults are then.
    """
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = dict(derive_kwargs or {})
    write_json(folder / "arch.json", {
        "arch": arch,
        "level": space.level,
        "example_input_shape": list(space.example_input.shape),
        "options": {name: list(options) for name, options in space.choices.items()},
        "allow_empty_stages": bool(kwargs.get("allow_empty_stages", False)),
        "ignored": list(kwargs.get("ignored") or ()),
        **extra,
    })
    with atomic_write(folder / "student.pt", binary=True) as handle:
        torch.save(student.state_dict(), handle)


def load_student(teacher: nn.Module, arch_path: str | Path, state_path: str | Path) -> nn.Module:
    """Rebuild a saved student from its teacher, ``arch.json`` and ``student.pt``.

    Weights load with ``weights_only=True``.

    Raises:
        ValueError: If a file is unreadable or does not fit this teacher.
    """
    try:
        spec = json.loads(Path(arch_path).read_text())
        arch, shape = spec["arch"], [int(n) for n in spec["example_input_shape"]]
        level = int(spec.get("level", 1))
        options = spec.get("options")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{arch_path}: not a protege arch.json ({exc})") from exc
    try:
        space = derive(teacher, torch.zeros(*shape), level=level, options=options,
                       allow_empty_stages=bool(spec.get("allow_empty_stages", False)),
                       ignored=spec.get("ignored") or ())
    except ValueError as exc:
        raise ValueError(f"{arch_path}: architecture does not fit this teacher ({exc})") from exc
    try:
        student = space.materialize(arch)
    except ValueError as exc:
        raise ValueError(f"{arch_path}: architecture does not fit this teacher ({exc})") from exc
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        student.load_state_dict(state)
    except Exception as exc:  # unpickling and shape errors come in many types
        # load_state_dict puts the first mismatch on the second line: show it.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:2]
        raise ValueError(f"{state_path}: weights do not fit the student of {arch_path} "
                         f"({' '.join(lines)}); pass the student.pt saved with this arch.json "
                         "and the teacher it was searched from") from exc
    return student.eval()
