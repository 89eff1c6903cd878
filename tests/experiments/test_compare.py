"""The strategy-comparison harness: arms x seeds, equal budgets, records, report, resume."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_nets import make_tiny_net
from torch.utils.data import TensorDataset

import protege.distill
from protege.estimators import count_macs
from protege.experiments import (
    CompareTask,
    StaleRecord,
    load_compare_config,
    paired_test,
    run_compare,
    split_epochs,
    total_budget,
    write_compare_report,
)
from protege.experiments._compare import ladder_fits, train_subset
from protege.experiments._compare_report import _covered
from protege.search import ConfigError, Study, hypervolume
from protege.spaces import derive

FIELDS = ("arm", "seed", "hypervolume", "best_macs_ratio_within_1pt",
          "best_test_accuracy_within_1pt", "train_seconds", "front")


@pytest.fixture
def toy_task() -> CompareTask:
    net = make_tiny_net()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(320, 1, 8, 8, generator=generator)
    with torch.no_grad():
        y = net(x).argmax(dim=1)
    return CompareTask("toy", net, TensorDataset(x[:192], y[:192]),
                       TensorDataset(x[192:256], y[192:256]), TensorDataset(x[256:], y[256:]),
                       x[:1])


def _config(**extra: Any) -> Any:
    data = {"task": "digits", "seeds": [0, 1], "budget": {"trials": 3},
            "search": {"distill": {"epochs": 1, "finetune_epochs": 2}},
            "arms": {"protege": {}, "torch_pruning": {"kind": "torch_pruning"}}}
    return load_compare_config(data | extra)


class _Meter:
    """Counts what every call of the trainer really trained: epochs run x training samples."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.spent: list[int] = []
        real = protege.distill.train_student

        def counting(student, train, val, *, report=None, **kwargs):  # type: ignore[no-untyped-def]
            epochs: list[int] = []

            def seen(epoch: int, accuracy: float) -> None:
                epochs.append(epoch)
                if report is not None:
                    report(epoch, accuracy)

            try:
                return real(student, train, val, report=seen, **kwargs)
            finally:
                self.spent.append(len(epochs) * len(train.inputs))

        monkeypatch.setattr(protege.distill, "train_student", counting)

    def take(self) -> int:
        total, self.spent[:] = sum(self.spent), []
        return total


def test_two_arms_two_seeds_equal_budgets_json_and_resume(
        toy_task: CompareTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    meter = _Meter(monkeypatch)
    measured: dict[tuple[str, int], int] = {}

    def progress(record: Any) -> None:
        measured[record.arm, record.seed] = meter.take()

    # the teacher's MACs are counted once per arm and seed (with its val and test accuracy)
    import protege.estimators
    import protege.experiments._compare as compare_module

    real_count = protege.estimators.count_macs
    teacher_counts = []

    def count(model: Any, *args: Any, **kwargs: Any) -> Any:
        teacher_counts.append(model is toy_task.teacher)
        return real_count(model, *args, **kwargs)

    monkeypatch.setattr(protege.estimators, "count_macs", count)
    monkeypatch.setattr(compare_module, "count_macs", count, raising=False)
    records = run_compare(config, out=tmp_path / "cmp", task=toy_task, progress=progress)
    assert sum(teacher_counts) == 4  # 2 arms x 2 seeds
    budget = total_budget(config, len(toy_task.train))
    assert budget == (3 * 1 + 2) * 192
    assert [(r.arm, r.seed) for r in records] == [
        ("protege", 0), ("protege", 1), ("torch_pruning", 0), ("torch_pruning", 1)]
    for record in records:
        # the instrumented trainer saw exactly the budget, and the record says so too
        assert measured[record.arm, record.seed] == budget == record.sample_passes
        assert record.students_trained >= 2 and record.pick is not None
        assert 0.0 < record.hypervolume < 1.0
    search = records[0]
    assert search.students_trained == 4  # 3 one-epoch trials and the fine-tuned pick
    assert records[2].students_trained == 2  # 5 epochs at 2 fine-tune epochs: 2 ratios (3 + 2)

    paths = write_compare_report(records, config=config, command="protege compare toy.yaml",
                                 results_dir=tmp_path / "results")
    payload = json.loads(paths["json"].read_text())
    assert len(payload["records"]) == 4
    for row in payload["records"]:
        assert all(key in row for key in FIELDS)
        for point in row["front"]:
            assert {"accuracy", "macs_ratio"} <= set(point)
    assert payload["paired_tests"]["torch_pruning"]["hypervolume"]["n"] == 2
    text = paths["md"].read_text()
    assert "protege compare toy.yaml" in text and "| torch_pruning |" in text
    assert "The peer's points: how many of `torch_pruning`'s front points" in text
    assert paths["hv_png"].stat().st_size > 0 and paths["fronts_png"].stat().st_size > 0

    again = run_compare(config, out=tmp_path / "cmp", task=toy_task)  # resumes: trains nothing
    assert meter.take() == 0
    assert [r.to_dict() for r in again] == [r.to_dict() for r in records]

    # Every record names what made it, and the report names the one code version.
    for row in payload["records"]:
        assert {"commit", "dirty", "versions", "config_hash", "machine"} <= set(
            row["provenance"])
    assert "Every record was made by one code version" in text
    assert payload["made_by"] and len(payload["made_by"]) == 1

    # A record made by other code is refused, in one line, before anything runs.
    done = tmp_path / "cmp" / "torch_pruning" / "seed1" / "record.json"
    row = json.loads(done.read_text())
    row["provenance"]["commit"] = "0" * 40
    done.write_text(json.dumps(row))
    with pytest.raises(StaleRecord, match=r"made by other code .*--reuse-stale"):
        run_compare(config, out=tmp_path / "cmp", task=toy_task)
    assert meter.take() == 0
    stale = run_compare(config, out=tmp_path / "cmp", task=toy_task, reuse_stale=True)
    assert meter.take() == 0 and stale[3].provenance["commit"] == "0" * 40
    mixed = write_compare_report(stale, config=config, command="protege compare toy.yaml",
                                 results_dir=tmp_path / "mixed")
    assert "Records of 2 code versions are mixed here" in mixed["md"].read_text()


def test_a_search_arm_with_several_fine_tunes_reserves_them_in_its_budget(
        toy_task: CompareTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(seeds=[0], budget={"trials": 4},
                     arms={"protege_bisect": {"set": ["finetunes=2"]}})
    meter = _Meter(monkeypatch)
    [record] = run_compare(config, out=tmp_path / "cmp", task=toy_task)
    budget = total_budget(config, len(toy_task.train))
    assert budget == (4 * 1 + 2) * 192
    # two 2-epoch fine-tunes are reserved: at most 2 one-epoch trials run before them
    assert record.sample_passes == meter.take() <= budget
    assert record.pick is not None and record.students_trained <= 2 + 2


def test_a_oneshot_arm_counts_its_supernet_and_stays_within_the_budget(
        toy_task: CompareTask, tmp_path: Path) -> None:
    config = _config(seeds=[0], budget={"trials": 6}, arms={"protege_oneshot": {"set": [
        "method=oneshot", "n_trials=8", "oneshot.calibration_samples=96"]}})
    [record] = run_compare(config, out=tmp_path / "cmp", task=toy_task)
    budget = total_budget(config, len(toy_task.train))
    assert budget == (6 * 1 + 2) * 192
    # the fine-tune (2 x 192) kept back; 8 students scored at 96 // 3 each; the supernet gets
    # what is left: (1536 - 384 - 256) // (4 x 192) = 1 epoch of 4 students a step
    supernet = json.loads((tmp_path / "cmp" / "protege_oneshot" / "seed0" / "run"
                           / "supernet.json").read_text())
    assert supernet["epochs"] == 1 and supernet["sample_passes"] == 4 * 192
    assert record.sample_passes <= budget
    assert record.sample_passes == 4 * 192 + 2 * 192 + 32 * (record.students_trained - 1)
    assert record.pick is not None
    assert record.front and all(point["source"] != "supernet training" for point in record.front)
    assert len(record.curve) == record.students_trained  # the supernet is compute, not a point


def test_a_oneshot_arm_reserves_its_front_fine_tunes_and_counts_them_as_points(
        toy_task: CompareTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # slice scores that grow with the MACs, below the teacher's (1.0 on these labels): the
    # pick is the most accurate slice, the largest, with cheaper students below it
    real = Study.trials.fget

    def scored(self: Study) -> tuple:
        return tuple(dataclasses.replace(r, accuracy=0.3 + r.macs / 1e6)
                     if r.trained and r.macs else r for r in real(self))

    monkeypatch.setattr(Study, "trials", property(scored))
    config = _config(seeds=[0], budget={"trials": 8},
                     arms={"protege_oneshot": {"set": [
                         "method=oneshot", "n_trials=8", "oneshot.calibration_samples=96",
                         "oneshot.finetune_front=1", "oneshot.front_epochs=1"]}})
    meter = _Meter(monkeypatch)
    [record] = run_compare(config, out=tmp_path / "cmp", task=toy_task)
    budget = total_budget(config, len(toy_task.train))
    assert budget == (8 * 1 + 2) * 192
    # kept back: the pick's fine-tune (2 x 192) and one 1-epoch front fine-tune (192); 8
    # students scored at 96 // 3 each; the supernet gets (1920 - 576 - 256) // 768 = 1 epoch
    supernet = json.loads((tmp_path / "cmp" / "protege_oneshot" / "seed0" / "run"
                           / "supernet.json").read_text())
    assert supernet["epochs"] == 1
    tuned = meter.take()  # the pick's and the front's fine-tunes (the supernet: its own loop)
    summary = json.loads((tmp_path / "cmp" / "protege_oneshot" / "seed0" / "run"
                          / "summary.json").read_text())
    front = [f for f in summary["pick"]["finetuned"] if f.get("front")]
    first = summary["pick"]["finetuned"][0]  # the largest slice, fine-tuned for the pick
    assert len(front) == 1 and front[0]["macs"] < first["macs"]
    assert tuned == 2 * 192 + 1 * 192
    assert record.sample_passes == 4 * 192 + tuned + 32 * 8 <= budget
    # the front's fine-tune met the limit (the toy's students all reach 100 %): cheaper than
    # the first, it is the pick, a point at its fine-tuned accuracy
    assert summary["pick"]["trial"] == front[0]["trial"]
    assert record.pick is not None and record.pick["source"] == f"trial {front[0]['trial']}"
    assert f"pick (trial {front[0]['trial']}, fine-tuned)" in {p["source"] for p in record.front}


def test_a_ladder_arm_spends_its_budget_to_within_its_shortest_rung(
        toy_task: CompareTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ladder (0, 1, 2, 4): the top rung trains 2 epochs, rung 1 one. A ladder that stopped
    # when the budget left could not pay for its longest rung left up to 2 epochs unspent;
    # it passes over promotions that do not fit and takes the ones that do.
    config = _config(seeds=[0], budget={"trials": 6},
                     search={"distill": {"epochs": 1, "finetune_epochs": 4}},
                     arms={"protege_rungs": {"set": [
                         "method=rungs", "strategy=random", "rungs.eta=2",
                         "rungs.calibration_samples=96"]}})
    meter = _Meter(monkeypatch)
    [record] = run_compare(config, out=tmp_path / "cmp", task=toy_task)
    budget = total_budget(config, len(toy_task.train))
    assert budget == (6 * 1 + 4) * 192
    trained = meter.take()
    rung0 = record.sample_passes - trained  # 96 // 3 for each student scored at rung 0
    assert rung0 == 32 * record.students_trained
    assert budget - 192 < record.sample_passes <= budget
    assert record.pick is not None


def _mac_budget_run(toy_task: CompareTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    arms: dict[str, Any]) -> tuple[list[Any], dict[str, list[int]], int, int]:
    config = _config(seeds=[0], budget={"kind": "mac_passes", "trials": 4}, arms=arms)
    meter = _Meter(monkeypatch)
    calls: dict[str, list[int]] = {}

    def progress(record: Any) -> None:
        calls[record.arm] = list(meter.spent)
        meter.take()

    records = run_compare(config, out=tmp_path / "cmp", task=toy_task, progress=progress)
    teacher_macs = count_macs(toy_task.teacher, toy_task.example_input)[0]
    budget = total_budget(config, 192, teacher_macs=teacher_macs)
    assert budget == (4 * 1 + 2) * 192 * teacher_macs
    for record in records:
        assert record.budget == budget and record.budget_kind == "mac_passes"
        assert record.mac_passes <= budget  # no arm overspends
        assert record.pick is not None
    smallest = derive(toy_task.teacher, toy_task.example_input, level=1).macs_bounds()[0]
    text = write_compare_report(records, config=config, command="protege compare toy.yaml",
                                results_dir=tmp_path / "results")["md"].read_text()
    assert "compute in MAC-passes" in text and "the budget is counted in MAC-passes" in text
    return records, calls, budget, smallest


def test_a_budget_in_mac_passes_charges_each_student_its_own_macs(
        toy_task: CompareTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (ladder, sweep), calls, budget, smallest = _mac_budget_run(toy_task, tmp_path, monkeypatch, {
        "protege_rungs": {"set": ["method=rungs", "strategy=random", "rungs.eta=2",
                                  "rungs.calibration_samples=96"]},
        "torch_pruning": {"kind": "torch_pruning"}})
    # a ladder stops only when not even one more epoch of the smallest student fits
    # (training its pick to the top rung kept back); smaller students cost less, so it
    # trains more than the 6 teacher-sized epochs the budget is made of
    assert budget - 192 * smallest < ladder.mac_passes
    assert ladder.sample_passes > (4 * 1 + 2) * 192
    # the sweep shares the budget in equal MAC-passes: the smaller student trains longer
    teacher_macs = budget // ((4 * 1 + 2) * 192)
    # (as many students as fine-tunes fit in the sample-passes: 6 epochs / 2, ratios
    # 0.1, 0.45, 0.8 of the channels cut, ever fewer MACs)
    spent = calls["torch_pruning"]
    assert len(spent) == sweep.students_trained == 3
    assert spent[0] < spent[1] < spent[2]
    assert budget - 3 * 192 * teacher_macs < sweep.mac_passes


def test_a_promotion_to_a_new_highest_rung_is_paid_from_the_picks_reserve() -> None:
    ladder, samples = (0, 1, 3, 10), 100
    # one student at rung 1; bringing it to the top costs 9 epochs, all that is left:
    # its promotion to rung 2 is part of that reserve, not a cost on top of it (the
    # harness before this rule counted it twice and stopped the ladder with 9 epochs left)
    fits = dict(samples=samples, reached=1, pick_macs=1, macs=1)
    assert ladder_fits(ladder, left=9 * samples, rung=2, **fits)
    assert not ladder_fits(ladder, left=9 * samples - 1, rung=2, **fits)
    # a promotion below the highest rung is paid on top of the reserve
    assert ladder_fits(ladder, left=10 * samples, rung=1, **fits)
    assert not ladder_fits(ladder, left=10 * samples - 1, rung=1, **fits)
    # in MAC-passes: a student joining the highest rung may become the pick, so the
    # reserve grows to its MACs when they are larger than the pick's now
    big = dict(samples=samples, reached=1, pick_macs=10, macs=30)
    assert not ladder_fits(ladder, left=30 * samples + 9 * 10 * samples, rung=1, **big)
    assert ladder_fits(ladder, left=30 * samples + 9 * 30 * samples, rung=1, **big)


@pytest.mark.slow  # ~200 proposals, most rejected as too large for what is left: ~1 min
def test_a_search_arm_keeps_back_its_picks_fine_tune_in_mac_passes(
        toy_task: CompareTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [search], _, budget, smallest = _mac_budget_run(toy_task, tmp_path, monkeypatch, {
        "protege": {"set": ["strategy=random", "rules.gain=false", "rules.curve=false"]}})
    # it stops when not even one more epoch of the smallest student fits with the pick's
    # fine-tune, or when its sampler proposes only students too large for what is left,
    # up to the study's cap of proposals: here within two epochs of the smallest student
    assert budget - 2 * 192 * smallest < search.mac_passes
    assert search.sample_passes > (4 * 1 + 2) * 192


def test_a_one_shot_arm_is_not_budgeted_in_mac_passes() -> None:
    with pytest.raises(ConfigError, match="one-shot arm is not budgeted in MAC-passes"):
        _config(budget={"kind": "mac_passes", "trials": 4},
                arms={"protege_oneshot": {"set": ["method=oneshot"]}})


@pytest.mark.slow  # two more searches: ~10 s on a quiet 2-core machine
def test_uniform_arm_and_pruned_trials_spend_the_budget(
        toy_task: CompareTask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The curve rule stops trials early: the search runs more of them until its share is spent.
    config = _config(seeds=[0], budget={"trials": 6}, arms={
        "protege": {"set": ["rules.min_trials=1", "rules.margin=0.5",
                            "distill.epochs=2"]},
        "uniform": {"kind": "uniform", "ratios": [0.25, 0.5, 1.0]}})
    meter = _Meter(monkeypatch)
    measured: dict[str, int] = {}
    records = run_compare(config, out=tmp_path, task=toy_task,
                          progress=lambda r: measured.__setitem__(r.arm, meter.take()))
    budget = total_budget(config, len(toy_task.train))
    search, uniform = records
    assert measured["uniform"] == uniform.sample_passes == budget
    per_trial = 2 * 192
    # within one trial of the budget (a trial is never cut short to fit)
    assert budget - per_trial < measured["protege"] == search.sample_passes <= budget
    assert uniform.students_trained == 3
    assert [p["source"] for p in uniform.front][0].startswith("uniform")


def _brute_force_area(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area of the union of the boxes [ref_acc, acc] x [cost, ref_cost], cell by cell."""
    xs = sorted({reference[0], *(a for a, _ in points)})
    ys = sorted({reference[1], *(c for _, c in points)})
    area = 0.0
    cells = itertools.product(itertools.pairwise(xs), itertools.pairwise(ys))
    for (x0, x1), (y0, y1) in cells:
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        if any(a >= mx and c <= my for a, c in points):
            area += (x1 - x0) * (y1 - y0)
    return area


@pytest.mark.parametrize("seed", range(6))
def test_hypervolume_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    points = [(float(a), float(c)) for a, c in zip(rng.uniform(0.05, 1.0, n),
                                                    rng.uniform(0.01, 1.0, n), strict=True)]
    reference = (0.1, 1.0)
    inside = [(a, c) for a, c in points if a > reference[0] and c < reference[1]]
    assert hypervolume(points, reference=reference) == pytest.approx(
        _brute_force_area(inside, reference), abs=1e-12)


def test_front_coverage_counts_weakly_dominated_points_over_shared_seeds() -> None:
    def rec(seed: int, *points: tuple[float, float]) -> dict[str, Any]:
        return {"seed": seed, "front": [{"accuracy": a, "macs_ratio": m} for a, m in points]}

    peer = [rec(0, (0.90, 0.1), (0.95, 0.5)), rec(1, (0.80, 0.2)), rec(2, (0.99, 0.9))]
    arm = [rec(0, (0.95, 0.1)), rec(1, (0.79, 0.01), (0.80, 0.2))]
    # seed 0: (0.95, 0.1) covers both; seed 1: a tie counts; seed 2: the arm never ran it
    assert _covered(peer, arm) == (3, 3)
    assert _covered(arm, peer) == (1, 3)  # only the tie at seed 1


def test_split_epochs_and_bad_configs() -> None:
    assert split_epochs(180, 9) == [20] * 9
    assert split_epochs(180, 7) == [26, 26, 26, 26, 26, 25, 25]
    with pytest.raises(ValueError, match="cannot train"):
        split_epochs(3, 4)
    with pytest.raises(ConfigError, match="arms.x.kind"):
        _config(arms={"x": {"kind": "pruning"}})
    with pytest.raises(ConfigError, match="unknown key"):
        _config(arms={"x": {"ratio": [0.5]}})
    with pytest.raises(ConfigError, match="distill.lr"):
        _config(arms={"x": {"set": ["distill.lr=-1"]}})
    with pytest.raises(ConfigError, match="leave no trial"):
        _config(arms={"x": {"set": ["finetunes=3"]}}, budget={"trials": 3})
    with pytest.raises(ConfigError, match="budget.kind"):
        _config(budget={"kind": "flops"})


SHIPPED = sorted(Path(__file__).parents[2].glob("experiments/compare_*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_compare_configs_load_and_name_their_command(path: Path) -> None:
    config = load_compare_config(path)  # every arm's protege config is validated here
    first = config.arms[0]  # the reference of the paired tests: a protege search
    assert len(config.seeds) >= 2 and first.kind == "search" and first.name.startswith("protege")
    assert f"protege compare experiments/{path.name}" in path.read_text()


def test_both_headline_configs_and_their_quick_variants_ship() -> None:
    assert [p.stem for p in SHIPPED] == [
        "compare_fashion_mnist", "compare_fashion_mnist_oneshot",
        "compare_fashion_mnist_oneshot_front", "compare_fashion_mnist_oneshot_front_pick",
        "compare_fashion_mnist_oneshot_pick", "compare_fashion_mnist_oneshot_ranks",
        "compare_fashion_mnist_quick",
        "compare_fashion_mnist_rungs", "compare_fashion_mnist_rungs_600k",
        "compare_fashion_mnist_rungs_ablations", "compare_fashion_mnist_rungs_limit",
        "compare_mnist1d", "compare_mnist1d_macs", "compare_mnist1d_oneshot",
        "compare_mnist1d_oneshot_ranks", "compare_mnist1d_oneshot_warm", "compare_mnist1d_quick",
        "compare_mnist1d_rungs", "compare_mnist1d_rungs_ablations",
        "compare_mnist1d_rungs_levels", "compare_mnist1d_rungs_limit",
        "compare_mnist1d_rungs_tiebreak"]


def test_train_subset_is_one_fixed_seeded_subset_in_data_order() -> None:
    data = TensorDataset(torch.arange(50), torch.arange(50) % 3)
    first, again = train_subset(data, 12), train_subset(data, 12)
    rows = first.tensors[0]
    assert len(first) == 12 and torch.equal(rows, again.tensors[0])
    assert torch.equal(rows, rows.sort().values) and len(set(rows.tolist())) == 12
    assert torch.equal(first.tensors[1], rows % 3)  # inputs and labels stay aligned
    assert train_subset(data, None) is data and train_subset(data, 50) is data


def test_paired_test_reports_exact_wilcoxon_and_bootstrap_interval() -> None:
    a = [0.9, 0.8, 0.85, 0.7, 0.95, 0.6]
    b = [x - d for x, d in zip(a, [0.1, 0.2, 0.15, 0.05, 0.12, 0.08], strict=True)]
    result = paired_test(a, b)
    assert result["n"] == 6
    assert result["mean_diff"] == pytest.approx(0.7 / 6)
    assert result["wilcoxon_p"] == pytest.approx(2 / 2**6)  # every difference positive
    low, high = result["ci95"]
    assert 0.05 <= low < result["mean_diff"] < high <= 0.2
    assert paired_test([1.0, 2.0], [1.0, 2.0])["wilcoxon_p"] is None
    assert math.isnan(paired_test([], [])["mean_diff"])


@pytest.mark.slow  # a search and a sweep of half a second each, plus their overhead
def test_time_budget_bounds_searches_and_sweeps(toy_task: CompareTask, tmp_path: Path) -> None:
    config = _config(seeds=[0], budget={"kind": "time", "seconds": 0.5}, arms={
        "protege": {}, "uniform": {"kind": "uniform", "ratios": [0.25, 0.5, 0.75, 1.0]}})
    search, uniform = run_compare(config, out=tmp_path, task=toy_task)
    assert search.budget is None and uniform.budget is None
    # trials stop at the timeout (the one running finishes), then the pick is fine-tuned
    assert 2 <= search.students_trained < 20 and search.pick is not None
    # a sweep stops starting students once the seconds are spent; each gets finetune_epochs
    assert 1 <= uniform.students_trained <= 4
    assert uniform.sample_passes == uniform.students_trained * 2 * len(toy_task.train)
