"""Result files of the benchmarks: one markdown file, one replaceable section per part."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from protege.provenance import describe_code, machine

__all__ = ["write_section"]


def write_section(path: Path, *, title: str, key: str, heading: str, command: str,
                  body: Sequence[str]) -> None:
    """Put ``body`` under ``heading`` in ``path``, replacing the section of the same ``key``.

    Each section carries the command that made it and the code and machine that ran it
    (``protege.provenance``), so a rerun of one part of a benchmark rewrites only its own
    section and leaves the others as they were, and a reader sees which code made which.
    """
    text = path.read_text() if path.is_file() else f"# {title}\n"
    begin, end = f"<!-- {key} -->", f"<!-- /{key} -->"
    where = machine()
    made_by = (f"Made by {describe_code()}; on {where['cpu']} ({where['cores']} cores, "
               f"{where['threads']} torch threads"
               f"{', ' + where['accelerator'] if where['accelerator'] else ''}).")
    section = "\n".join([begin, f"## {heading}", "", "```", command, "```", "", made_by, "",
                         *body, end])
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if begin in text:
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
