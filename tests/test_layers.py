"""The package layers hold: a light ``import protege.spaces``, no package importing another
package's private modules, and the facade's ``protege.search`` always the function."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"protege": "protege", "spaces": "spaces", "distill": "distill",
           "estimators": "estimators", "search": "search", "experiments": "experiments"}
"""Folder -> the import name's second part (``protege`` itself for the facade)."""


def _package_of(module: str) -> str | None:
    """``protege.search.pick._pick`` -> ``search``; ``protege._logging`` -> ``protege``."""
    parts = module.split(".")
    if parts[0] != "protege":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS and parts[1] != "protege" \
        else "protege"


def _private_imports(path: Path, folder: str) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            target = _package_of(name)
            private = any(part.startswith("_") and not part.startswith("__")
                          for part in name.split(".")[1:])
            if target is not None and target != folder and private:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    return found


def test_no_package_imports_another_packages_private_modules():
    found = [line for folder in FOLDERS for path in sorted((ROOT / folder).rglob("*.py"))
             for line in _private_imports(path, folder)]
    # the facade's own private modules (``protege._logging``) are the facade's business
    assert [line for line in found if "imports protege._" not in line
            or not line.startswith("protege/")] == []


HEAVY = ("optuna", "matplotlib", "pytorch_lightning", "lightning", "ray")


def test_the_subsystems_load_no_controller_library():
    # one interpreter, lightest first: what each import added is checked after it
    code = ("import json, sys\n"
            "seen = {}\n"
            "for module in ('protege.spaces', 'protege.estimators', 'protege.distill'):\n"
            "    __import__(module)\n"
            f"    seen[module] = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print(json.dumps(seen))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    seen = json.loads(done.stdout)
    assert seen["protege.spaces"] == [] and seen["protege.estimators"] == []
    # distill trains with Lightning (which may bring matplotlib), never the controller's
    assert not set(seen["protege.distill"]) & {"optuna", "ray"}


@pytest.mark.parametrize("first", ["import protege.search.pick"])
def test_protege_search_is_the_function_whatever_was_imported_first(first):
    code = (f"{first}\nimport protege, inspect\n"
            "print(inspect.isfunction(protege.search), protege.Config.__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "True Config"
