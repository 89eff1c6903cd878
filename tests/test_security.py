"""Security: no code runs from weights, configs or overrides; the dashboard stays local;
no config makes protege write outside the run folder."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from protege.cli import _parser, main
from protege.search import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protege", "spaces", "distill", "estimators", "search", "experiments")
SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _calls(tree: ast.AST):  # type: ignore[no-untyped-def]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(
                func.value, ast.Name) else None
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            yield node, owner, name


def _unsafe(path: Path, root: Path = ROOT) -> list[str]:
    """Lines of ``path`` that could run code from data."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node, owner, name in _calls(tree):
        where = f"{path.relative_to(root)}:{node.lineno}"
        keywords = {k.arg: k.value for k in node.keywords}
        if owner == "torch" and name == "load":
            flag = keywords.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(f"{where} torch.load without weights_only=True")
        if owner == "yaml" and name in ("load", "load_all", "unsafe_load", "full_load"):
            found.append(f"{where} yaml.{name} (use yaml.safe_load)")
        if isinstance(node.func, ast.Name) and name in ("eval", "exec", "compile", "__import__"):
            found.append(f"{where} {name}()")
        if owner in ("np", "numpy") and name == "load":
            flag = keywords.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(f"{where} np.load with allow_pickle")
        if "shell" in keywords and not (isinstance(keywords["shell"], ast.Constant)
                                        and keywords["shell"].value is False):
            found.append(f"{where} a subprocess with shell=True")
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for module in names:
            if module.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve",
                                        "cloudpickle"):
                found.append(f"{path.relative_to(root)}:{node.lineno} imports {module}")
    return found


def test_the_scan_sees_every_kind_of_unsafe_call(tmp_path):
    bad = tmp_path / "unsafe.py"
    bad.write_text("import pickle\nimport torch, yaml, subprocess\n"
                   "torch.load('w.pt')\ntorch.load('w.pt', weights_only=False)\n"
                   "yaml.load(open('c.yaml'))\neval('1')\nexec('x = 1')\n"
                   "subprocess.run('ls', shell=True)\n")
    assert len(_unsafe(bad, tmp_path)) == 7


def test_no_source_file_can_run_code_from_data():
    assert len(SOURCES) > 30
    found = [line for path in SOURCES for line in _unsafe(path)]
    assert found == []


def test_configs_with_python_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f"task: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config)
    good = tmp_path / "good.yaml"
    good.write_text("task: digits\n")
    with pytest.raises(ConfigError, match="not valid YAML|expected"):
        load_config(good, [f"seed=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


def test_the_dashboard_listens_on_localhost_unless_told_otherwise():
    args = _parser().parse_args(["dashboard", "runs/x"])
    assert args.host == "127.0.0.1"
    assert _parser().parse_args(["dashboard", "runs/x", "--host", "0.0.0.0"]).host == "0.0.0.0"


@pytest.mark.parametrize("storage", [
    "journal:{tmp}/study.journal",                   # beside the run folder
    "journal:{tmp}/run/../../escape.journal",        # .. out of it
    "sqlite:///{tmp}/elsewhere/study.db",
    "journal:{tmp}/link/study.journal",              # a symlink out of it
])
def test_a_config_cannot_make_protege_write_outside_the_run_folder(storage, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    storage = storage.replace("{tmp}/link", str(out / "link")).format(tmp=tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(f"task: digits\nn_trials: 1\nstorage: {storage}\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["run", str(config), "--out", str(out)]) == 2
    assert "outside the run folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written anywhere
