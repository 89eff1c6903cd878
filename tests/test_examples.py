"""The examples/ folder, end to end through the CLI at a tiny size (CI runs both)."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protege.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = ["--set", "n_trials=2", "--set", "distill.epochs=1", "--set", "distill.finetune_epochs=1"]


def _example(tmp_path: Path, script: str, config: str, *args: str,
             extra: tuple[str, ...] = ()) -> tuple[int, str]:
    folder = tmp_path / config.split("_")[0]
    subprocess.run([sys.executable, str(EXAMPLES / script), "--out", str(folder), *args],
                   check=True, capture_output=True, text=True)
    shutil.copy(EXAMPLES / config, tmp_path / config)  # its relative paths find the data
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["run", str(tmp_path / config), "--out", str(tmp_path / "run"), *TINY,
                     *extra])
    return code, printed.getvalue()


def test_the_mlp_on_a_csv_table_example(tmp_path):
    code, printed = _example(tmp_path, "make_digits_table.py", "digits_table.yaml",
                             "--samples", "200", "--epochs", "5")
    assert code == 0, printed
    assert "teacher torchvision.ops.MLP (mlp.pt)" in printed and "10 classes" in printed
    assert "pick: trial" in printed


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_the_resnet18_on_an_image_folder_example(tmp_path):
    code, printed = _example(tmp_path, "make_fashion_folder.py", "fashion_folder.yaml",
                             "--per-class", "4", "--epochs", "1",
                             extra=("--set", "constraints.max_macs=0.9"))
    assert code == 0, printed
    assert "teacher torchvision.models.resnet18 (resnet18.pt)" in printed
    assert "input [3, 32, 32] float32" in printed and "pick: trial" in printed


def test_the_int8_latency_example_searches_accuracy_against_int8_latency():
    from protege.search import load_config

    config = load_config(EXAMPLES / "mnist1d_int8_latency.yaml").resolve()
    assert tuple(config.objectives) == ("accuracy", "latency")
    assert (config.latency.runtime, config.latency.precision) == ("onnxruntime", "int8")
