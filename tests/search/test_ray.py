"""The Ray Tune backend runs the one trial function: the same study as in-process, rejected
students as rejected records, resumable, and on a cluster whose nodes share no run folder."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn
from torch.utils.data import TensorDataset

import protege
from protege.search import Config, Outcome
from protege.search import _attrs as attrs

ray = pytest.importorskip("ray")


def teacher() -> nn.Module:
    # Ray's workers unpickle the teacher: its classes must be importable there (torch's are).
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 16, 10)).eval()


def data() -> dict[str, TensorDataset]:
    net = teacher()
    x = torch.randn(320, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = net(x).argmax(1)
    return {"train": TensorDataset(x[:192], y[:192]), "val": TensorDataset(x[192:256], y[192:256])}


def config(backend: str, n_trials: int, **ray_settings) -> Config:
    return Config.from_dict({
        "n_trials": n_trials, "strategy": "tpe", "seed": 3, "backend": backend,
        "constraints": {"max_accuracy_drop": 0.5, "max_macs": 0.7},
        "rules": {"min_trials": 2, "margin": 0.0, "min_gain": 0.05},
        "distill": {"epochs": 2, "finetune_epochs": 1, "batch_size": 64},
        "ray": {"max_concurrent": 1, **ray_settings},
    })


def search(out, cfg: Config) -> protege.SearchResult:
    return protege.search(teacher(), **data(), example_input=torch.zeros(1, 1, 8, 8),
                          config=cfg, out=out)


@pytest.fixture
def local_ray():
    torch.set_num_threads(1)  # as each Ray trial (ray.cpus_per_trial: 1), so runs agree
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_ray_and_in_process_run_the_same_study(tmp_path, local_ray):
    here = search(tmp_path / "here", config("optuna", 7))
    there = search(tmp_path / "ray", config("ray", 7))
    kinds = [(r.number, r.outcome, r.arch) for r in here.trials]
    assert [(r.number, r.outcome, r.arch) for r in there.trials] == kinds
    assert {Outcome.REJECTED, Outcome.TRAINED} <= {r.outcome for r in there.trials}
    for record in there.trials:
        if record.outcome == Outcome.REJECTED:  # a record, never accuracy 0.0
            assert record.accuracy is None and record.reason.startswith("macs ")
    assert there.pick is not None and there.pick.trial == here.pick.trial
    lines = (tmp_path / "ray" / "trials.jsonl").read_text().splitlines()
    assert [json.loads(line)["number"] for line in lines] == list(range(7))

    # Resumed with a larger budget: the seven trials are kept, one more runs.
    more = search(tmp_path / "ray", config("ray", 8))
    assert [r.to_dict() for r in more.trials[:7]] == [r.to_dict() for r in there.trials]
    assert len(more.trials) == 8


@pytest.mark.slow  # a second local Ray: ~25 s
def test_ray_scores_a_oneshot_study_as_in_process(tmp_path, local_ray):
    def oneshot(backend: str) -> Config:
        return Config.from_dict({
            "method": "oneshot", "n_trials": 5, "seed": 3, "backend": backend,
            "oneshot": {"epochs": 1, "calibration_samples": 64},
            "constraints": {"max_accuracy_drop": 0.5},
            "distill": {"finetune_epochs": 1, "batch_size": 64}, "ray": {"max_concurrent": 1}})

    here = search(tmp_path / "here", oneshot("optuna"))
    there = search(tmp_path / "ray", oneshot("ray"))  # the driver trains the supernet
    assert (tmp_path / "ray" / "supernet.pt").is_file()
    assert [(r.arch, r.accuracy, r.rungs) for r in there.trials] == \
        [(r.arch, r.accuracy, r.rungs) for r in here.trials]
    assert there.pick is not None and there.pick.trial == here.pick.trial
    # Ray's searcher asks the same Optuna study: the uniform ladder is scored first there too
    from protege.search._rungs import uniform_ladder
    from protege.spaces import derive

    ladder = uniform_ladder(derive(teacher(), torch.zeros(1, 1, 8, 8)))
    assert len(ladder) > 1
    assert [r.arch for r in there.trials[:len(ladder)]] == ladder[:len(there.trials)]


@pytest.mark.slow  # a second local Ray: ~30 s
def test_ray_runs_a_ladder_as_in_process(tmp_path, local_ray):
    def rungs(backend: str) -> Config:
        return Config.from_dict({
            "method": "rungs", "n_trials": 7, "strategy": "random", "seed": 3,
            "backend": backend, "constraints": {"max_accuracy_drop": 0.5},
            "rungs": {"eta": 2, "min_epochs": 1, "calibration_samples": 64},
            "distill": {"finetune_epochs": 2, "batch_size": 64}, "ray": {"max_concurrent": 1}})

    here = search(tmp_path / "here", rungs("optuna"))
    there = search(tmp_path / "ray", rungs("ray"))
    # the same students, promoted to the same rungs by the same rule (MO-ASHA), each
    # rung going on from the student's own checkpoint in the run folder
    assert [(r.number, r.arch, r.rungs) for r in there.trials] == \
        [(r.number, r.arch, r.rungs) for r in here.trials]
    assert max(len(r.rungs) for r in there.trials) == 3  # someone reached the top rung
    assert any("to rung 1: rung 0: accuracy" in (r.reason or "") for r in there.trials)
    assert there.pick is not None and there.pick.trial == here.pick.trial
    assert there.pick.val_accuracy == pytest.approx(here.pick.val_accuracy)
    assert (tmp_path / "ray" / "rungs" / f"{there.pick.trial}-2.pt").is_file()
    promotions = optuna.load_study(study_name=attrs.RUNGS_STUDY_NAME,
                                   storage=f"sqlite:///{tmp_path / 'ray' / 'study.db'}")
    claims = [tuple(t.user_attrs[attrs.CLAIM])
              for t in promotions.get_trials(states=(TrialState.COMPLETE,))]
    assert claims and len(claims) == len(set(claims))  # no student promoted twice


@pytest.mark.slow
def test_a_study_runs_on_a_two_node_cluster_whose_nodes_share_no_folder(tmp_path):
    from ray.cluster_utils import Cluster

    os.makedirs("/tmp/ray", exist_ok=True)  # Ray writes its address file there
    head, other = tempfile.mkdtemp(prefix="head-"), tempfile.mkdtemp(prefix="node-")
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "temp_dir": head, "include_dashboard": False})
    cluster.add_node(num_cpus=1, temp_dir=other)
    try:
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        result = search(tmp_path / "run", config("ray", 6, max_concurrent=2))
        assert len(result.trials) == 6 and result.pick is not None
        assert all(r.outcome != Outcome.FAILED for r in result.trials)
    finally:
        ray.shutdown()
        cluster.shutdown()
        # Ray names the cluster it started there; a later ray.init() would try to join it.
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)
