"""What made a result: the code stamp ignores result tables, and every results section
names the code and machine that wrote it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from protege import provenance
from protege.experiments._results import write_section


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git checkout with one code file and one results table, committed."""
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "results" / "table.md").write_text("| a |\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    monkeypatch.setattr(provenance, "_SOURCE", tmp_path)
    provenance.code_provenance.cache_clear()
    yield tmp_path
    provenance.code_provenance.cache_clear()


def test_a_rewritten_results_table_does_not_make_the_code_dirty(checkout: Path) -> None:
    (checkout / "experiments" / "results" / "table.md").write_text("| b |\n")
    clean = provenance.code_provenance()
    assert clean["commit"] and clean["dirty"] is False and clean["diff"] is None
    provenance.code_provenance.cache_clear()
    (checkout / "code.py").write_text("x = 2\n")
    dirty = provenance.code_provenance()
    assert dirty["dirty"] is True and dirty["diff"]
    assert not provenance.same_code({**clean, "config_hash": "c"}, {**dirty, "config_hash": "c"})


def test_every_results_section_names_the_code_and_machine_that_made_it(tmp_path: Path) -> None:
    path = tmp_path / "bench.md"
    write_section(path, title="Bench", key="part", heading="Part", command="python bench.py",
                  body=["| x |"])
    text = path.read_text()
    stamp = provenance.code_provenance()
    assert f"Made by {provenance.describe_code()}" in text
    assert (stamp["commit"] or "no git checkout")[:10] in text
    assert provenance.machine()["cpu"] in text
