"""Packaging metadata that installs without deprecation warnings (issue 18, kind 8)."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

PYPROJECT = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())


def test_license_is_an_spdx_expression_not_a_table():
    # setuptools >= 77 warns on every install about ``license = {text = ...}``
    assert isinstance(PYPROJECT["project"]["license"], str)
    setuptools = next(r for r in PYPROJECT["build-system"]["requires"]
                      if r.startswith("setuptools"))
    match = re.search(r">=\s*(\d+)", setuptools)
    assert match and int(match.group(1)) >= 77


def test_timm_is_an_optional_extra_and_in_dev():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert any(r.startswith("timm") for r in extras["timm"])
    assert any(r.startswith("timm") for r in extras["dev"])
    assert not any(r.startswith("timm") for r in PYPROJECT["project"]["dependencies"])
