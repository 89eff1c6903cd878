"""ONNX and TorchScript files checked against PyTorch, int8 ONNX, and the pick's export hook."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime
import pytest
import torch
from tiny_nets import make_tiny_net

from protege.search import export_onnx, export_torchscript, quantize_int8
from protege.search.export import export_pick_onnx


def test_onnx_export_matches_pytorch_with_any_batch(tiny_net, tiny_data, tmp_path):
    inputs = tiny_data["val"].tensors[0]
    check = export_onnx(tiny_net, inputs[:1], tmp_path / "s.onnx", check_inputs=inputs)
    assert check.format == "onnx" and check.samples == len(inputs)
    assert check.max_abs_diff < 1e-4 and check.size_bytes == (tmp_path / "s.onnx").stat().st_size
    session = onnxruntime.InferenceSession(str(check.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": inputs[:7].numpy()})[0]  # the batch axis is dynamic
    with torch.no_grad():
        np.testing.assert_allclose(got, tiny_net(inputs[:7]).numpy(), atol=1e-4)


def test_the_check_sees_a_model_that_differs(tiny_data, tmp_path):
    """The max abs difference is a real comparison: once the model's weights change, the
    file written before no longer matches it."""
    net = make_tiny_net()
    inputs = tiny_data["val"].tensors[0]
    check = export_onnx(net, inputs[:1], tmp_path / "s.onnx", check_inputs=inputs)
    with torch.no_grad():
        net.fc.bias.add_(1.0)  # the file keeps the old bias
    from protege.search.export._onnx import _max_diff, _reference

    session = onnxruntime.InferenceSession(str(check.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": inputs.numpy()})[0]
    assert _max_diff(got, _reference(net, inputs)) == pytest.approx(1.0, abs=1e-4)


def test_torchscript_export_reloads_and_matches(tiny_net, tiny_data, tmp_path):
    inputs = tiny_data["val"].tensors[0]
    check = export_torchscript(tiny_net, inputs[:1], tmp_path / "s.pt", check_inputs=inputs)
    assert check.format == "torchscript" and check.max_abs_diff < 1e-5
    assert tiny_net.training is False


def test_int8_runs_and_reports_size_accuracy_and_latency(tiny_net, tiny_data, tmp_path):
    inputs = tiny_data["val"].tensors[0]
    check = export_onnx(tiny_net, inputs[:1], tmp_path / "s.onnx")
    result = quantize_int8(check.path, tmp_path / "s.int8.onnx",
                           calibration=tiny_data["train"].tensors[0], evaluation=tiny_data["test"],
                           batch_size=32)
    assert result.path.stat().st_size == result.int8.size_bytes < result.fp32.size_bytes
    assert result.fp32.accuracy == pytest.approx(1.0)  # the data is labelled by the net itself
    assert 0.5 < result.int8.accuracy <= 1.0 and 0.5 < result.agreement <= 1.0
    assert result.int8.latency_ms > 0 and result.fp32.batch_latency_ms > 0
    assert result.calibration_samples == len(tiny_data["train"])
    assert not list(tmp_path.glob(".*prepared*"))  # the intermediate file is cleaned up
    assert result.to_dict()["int8"]["size_bytes"] == result.int8.size_bytes


def test_the_pick_hook_records_a_missing_onnxruntime_instead_of_failing(
        tiny_net, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    info = export_pick_onnx(tmp_path, tiny_net, torch.randn(1, 1, 8, 8), None)
    assert "protege[export]" in info["error"]
    assert not (tmp_path / "student.onnx").exists()


def test_the_pick_hook_reports_the_difference(tiny_net, tmp_path):
    info = export_pick_onnx(tmp_path, tiny_net, torch.randn(1, 1, 8, 8), torch.randn(5, 1, 8, 8))
    assert info["path"] == "student.onnx" and info["samples"] == 5
    assert info["max_abs_diff"] < 1e-4
