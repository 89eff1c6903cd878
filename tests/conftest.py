"""Shared fixtures: tiny networks and data, so every test runs in a second or two."""

from __future__ import annotations

import pytest
import torch
from tiny_nets import TinyNet, make_tiny_net
from torch.utils.data import TensorDataset


@pytest.fixture
def tiny_net() -> TinyNet:
    return make_tiny_net()


@pytest.fixture
def tiny_data(tiny_net: TinyNet) -> dict[str, TensorDataset]:
    """Inputs labelled by the tiny teacher itself (so it is 100% accurate), 8x8 single channel."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(320, 1, 8, 8, generator=generator)
    with torch.no_grad():
        y = tiny_net(x).argmax(dim=1)
    return {
        "train": TensorDataset(x[:192], y[:192]),
        "val": TensorDataset(x[192:256], y[192:256]),
        "test": TensorDataset(x[256:], y[256:]),
    }


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Teachers trained by tests are cached per session, never in the user's home."""
    monkeypatch.setenv("PROTEGE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """A run that collects no test is an error, never a silent success (pytest's exit 5)."""
    if not session.items and not session.config.getoption("collectonly"):
        raise pytest.UsageError("no tests were collected: check the paths and -k/-m filters")
