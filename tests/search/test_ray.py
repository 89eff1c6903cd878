"""The Ray Tune backend completes a tiny study and resumes it (Ray is an optional extra)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from protege.search import Config, run_search

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def teacher() -> nn.Module:
    # Ray's workers unpickle the teacher: its classes must be importable there (torch's are).
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 16, 10)).eval()


def test_ray_backend_runs_and_resumes_a_study(tmp_path):
    net = teacher()
    x = torch.randn(320, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    config = Config.from_dict({
        "task": "custom", "n_trials": 5, "strategy": "tpe", "backend": "ray",
        "constraints": {"max_accuracy_drop": 0.5, "max_macs": 0.7},
        "distill": {"epochs": 2, "finetune_epochs": 1, "batch_size": 64},
    })

    def search():
        return run_search(net, train=TensorDataset(x[:192], y[:192]),
                          val=TensorDataset(x[192:256], y[192:256]), example_input=x[:1],
                          config=config, out=tmp_path / "run")

    first = search()
    assert len(first.trials) == 5
    assert {r.state for r in first.trials} <= {"complete", "pruned"}
    for record in first.trials:
        if record.state == "pruned":
            assert record.pruned_reason.startswith(("macs", "asha"))
    assert first.pick is not None
    for name in ("trials.jsonl", "pareto.json", "summary.json", "best/arch.json"):
        assert (tmp_path / "run" / name).is_file()
    lines = (tmp_path / "run" / "trials.jsonl").read_text().splitlines()
    assert [json.loads(line)["number"] for line in lines] == [0, 1, 2, 3, 4]

    again = search()  # restores the Tune experiment: nothing new runs
    assert [r.to_dict() for r in again.trials] == [r.to_dict() for r in first.trials]
