"""Benchmark of the search controller on MNIST-1D: pruning, overhead, worker and Ray scale-up.

Run from the repository root, alone on the machine (each part rewrites its own section
of ``experiments/results/search.md``):

    python experiments/bench_search.py --part pruning [--seeds 3] [--trials 40]
    python experiments/bench_search.py --part scale [--postgres URL]
    python experiments/bench_search.py --part ray

``pruning`` runs the same study with each pruning rule alone, all of them and none,
and reports the training compute saved (epochs trained; seconds as a check) and the
hypervolume lost against the study with no rule, seed by seed. It also reports the
controller's overhead: the share of the trials' wall time (first trial start to
last trial end, from the study's own timestamps) spent outside student training
and validation. ``scale`` times one and two worker processes on one storage (a
journal file; PostgreSQL too when a URL is given); ``ray`` runs the Ray Tune
backend with one and two trials at a time. Only public APIs are used: the
``protege`` command for workers, ``protege.search(...)`` for studies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import torch
import yaml

import protege
from protege.experiments import load_task
from protege.experiments._results import write_section
from protege.search import Config, Outcome

RESULTS = Path(__file__).resolve().parent / "results" / "search.md"
TITLE = "Search controller on MNIST-1D"
CONFIG = Path(__file__).resolve().parent / "mnist1d.yaml"
RULES = ("gain", "curve", "predictor")
ARMS: dict[str, dict[str, bool]] = {
    "no rule": dict.fromkeys(RULES, False),
    "gain only": {rule: rule == "gain" for rule in RULES},
    "curve only": {rule: rule == "curve" for rule in RULES},
    "predictor only": {rule: rule == "predictor" for rule in RULES},
    "all rules (default)": dict.fromkeys(RULES, True),
}


def _config(**overrides: object) -> Config:
    data = yaml.safe_load(CONFIG.read_text())
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return Config.from_dict(data).resolve()


TASK = str(yaml.safe_load(CONFIG.read_text())["task"])


def _trials_wall(out: Path) -> float:
    """First trial start to last trial end, from the study's own timestamps."""
    study = optuna.load_study(study_name="protege", storage=f"sqlite:///{out / 'study.db'}")
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_complete]
    start = min(t.datetime_start for t in trials if t.datetime_start)
    end = max(t.datetime_complete for t in trials if t.datetime_complete)
    return (end - start).total_seconds()


def _study(config: Config, out: Path) -> dict[str, float]:
    task = load_task(TASK, seed=0)
    start = time.perf_counter()
    result = protege.search(task.teacher, train=task.train, val=task.val, test=task.test,
                            example_input=task.example_input, config=config, out=out)
    wall = time.perf_counter() - start
    trained = [r for r in result.trials if r.duplicate_of is None]
    train = sum(r.train_seconds or 0.0 for r in trained)
    trials_wall = _trials_wall(out)

    def fired(prefix: str) -> int:
        return sum((r.reason or "").startswith(prefix) for r in result.trials)

    return {
        "wall": wall,
        "epochs": sum(len(r.history or ()) for r in trained),
        "train": train,
        "overhead_share": 1.0 - train / trials_wall,
        "overhead_per_trial": (trials_wall - train) / len(result.trials),
        "complete": sum(r.outcome.completed for r in result.trials),
        "rejected": sum(r.outcome == Outcome.REJECTED for r in result.trials),
        **{rule: fired(rule) for rule in RULES},
        "hypervolume": result.hypervolume,
        "pick_ratio": result.pick.macs / result.teacher.macs if result.pick else float("nan"),
        "pick_test": (result.pick.test_accuracy or float("nan")) if result.pick else float("nan"),
    }


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _pruning(args: argparse.Namespace, root: Path) -> list[str]:
    rows: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm, rules in ARMS.items():
            config = _config(seed=seed, n_trials=args.trials,
                             **{f"rules.{rule}": on for rule, on in rules.items()})
            rows[arm].append(_study(config, root / f"{arm.split()[0]}-{seed}"))
            print(arm, seed, json.dumps(rows[arm][-1]), flush=True)
    base = rows["no rule"]
    lines = [
        f"{args.seeds} seeds × {args.trials} trials, config `experiments/mnist1d.yaml` "
        "(4-epoch trials, max_macs 0.5, max_accuracy_drop 0.03); every arm runs the same "
        "number of trials (a skipped or stopped trial counts as one). Saved and lost are "
        "against the study with no rule of the same seed, then averaged (mean ± sd).",
        "",
        "| arm | epochs trained | compute saved | training s | hypervolume | HV lost "
        "| skipped (gain) | skipped (predictor) | stopped (curve) | rejected (limits) "
        "| pick MACs ratio | pick test acc | overhead share |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm, runs in rows.items():
        saved = [1 - r["epochs"] / b["epochs"] for r, b in zip(runs, base, strict=True)]
        lost = [1 - r["hypervolume"] / b["hypervolume"] for r, b in zip(runs, base, strict=True)]

        def col(key: str, digits: int = 3, runs: list[dict[str, float]] = runs) -> str:
            return _mean_sd([r[key] for r in runs], digits)

        lines.append(
            f"| {arm} | {col('epochs', 1)} | {_mean_sd([100 * s for s in saved], 1)} % | "
            f"{col('train', 1)} | {col('hypervolume', 4)} | "
            f"{_mean_sd([100 * x for x in lost], 2)} % | {col('gain', 1)} | "
            f"{col('predictor', 1)} | {col('curve', 1)} | {col('rejected', 1)} | "
            f"{col('pick_ratio')} | {col('pick_test')} | "
            f"{_mean_sd([100 * r['overhead_share'] for r in runs], 1)} % |")
    lines += [
        "",
        "Hypervolume: accuracy × MACs/teacher, reference (chance accuracy 0.1, the "
        "teacher's MACs). Overhead share: 1 − (training and validation seconds) / (first "
        "trial start to last trial end): sampling, materialising, MAC counting, pruning "
        "rules, storage writes and Lightning's set-up. Seconds were measured on the shared "
        "2-core machine under a lock that kept other benchmarks off it.",
    ]
    return lines


def _workers(n: int, trials: int, out: Path, storage: str) -> float:
    """Wall time for ``n`` processes (one torch thread each) to finish ``trials`` trials."""
    # Rules off: every trial trains, so the processes share real work, not skips.
    rules = [f"rules.{rule}=false" for rule in RULES]
    common = ["--out", str(out), "--storage", storage, "--set", f"n_trials={trials}",
              "--set", "distill.finetune_epochs=1", *(f"--set={r}" for r in rules)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    protege = [sys.executable, "-m", "protege.cli"]
    start = time.perf_counter()
    helpers = [subprocess.Popen([*protege, "-q", "worker", str(CONFIG), *common],
                                env=env, stdout=subprocess.DEVNULL) for _ in range(n - 1)]
    subprocess.run([*protege, "-q", "run", str(CONFIG), *common], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    for helper in helpers:
        helper.wait()
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    numbers = [r["number"] for r in records]
    assert len(numbers) == len(set(numbers)), "duplicate trial numbers"
    assert sum(r["state"] != "failed" for r in records) == trials, "wrong number of trials"
    return wall


def _scale(args: argparse.Namespace, root: Path) -> list[str]:
    # A journal file must lie in the run folder; PostgreSQL is emptied before each run.
    storages = {"journal file": lambda out: f"journal:{out / 'study.journal'}"}
    if args.postgres:
        storages["PostgreSQL"] = lambda out: args.postgres
    lines = [
        f"{args.trials} trials of `experiments/mnist1d.yaml` (fine-tune cut to 1 epoch, "
        "pruning rules off so that every trial trains), one torch thread per process; the "
        "owner (`protege run`) and `n − 1` `protege worker` processes share the storage.",
        "",
        "| storage | processes | wall s | trials / min | speed-up |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, storage in storages.items():
        walls = {}
        for n in (1, 2):
            out = root / f"{name.split()[0]}-{n}-{uuid.uuid4().hex[:6]}"
            url = storage(out)
            if name == "PostgreSQL":
                _reset_postgres(url)
            walls[n] = _workers(n, args.trials, out, url)
            print(name, n, walls[n], flush=True)
        for n, wall in walls.items():
            lines.append(f"| {name} | {n} | {wall:.1f} | {60 * args.trials / wall:.1f} | "
                         f"{walls[1] / wall:.2f}x |")
    return lines


def _reset_postgres(url: str) -> None:
    """Drop the protege study so each timed run starts empty."""
    try:
        optuna.delete_study(study_name="protege", storage=url)
    except KeyError:
        pass


def _ray(args: argparse.Namespace, root: Path) -> list[str]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    rows = []
    for concurrent in (1, 2):
        config = _config(n_trials=args.ray_trials, backend="ray",
                         **{"ray.max_concurrent": concurrent, "ray.scheduler": "fifo",
                            "ray.cpus_per_trial": 1, "distill.finetune_epochs": 1})
        task = load_task(TASK, seed=0)
        out = root / f"ray-{concurrent}"
        start = time.perf_counter()
        result = protege.search(task.teacher, train=task.train, val=task.val,
                                example_input=task.example_input, config=config, out=out)
        wall = time.perf_counter() - start - (result.pick.finetune_seconds if result.pick else 0)
        train = sum(r.train_seconds or 0.0 for r in result.trials)
        rows.append((concurrent, wall, train, len(result.trials)))
        print("ray", concurrent, wall, train, flush=True)
    ray.shutdown()
    lines = [
        f"{args.ray_trials} trials of `experiments/mnist1d.yaml` under `backend: ray` (local "
        "Ray with 2 CPUs, FIFO scheduler so every trial trains fully, 1 CPU and one torch "
        "thread per trial). Wall s excludes the pick's fine-tune. Ray's per-trial overhead "
        "= (wall × trials at once − Σ training s) / trials.",
        "",
        "| trials at once | wall s | trials / min | speed-up | Σ training s "
        "| Ray overhead s / trial |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for concurrent, wall, train, trials in rows:
        lines.append(f"| {concurrent} | {wall:.1f} | {60 * trials / wall:.1f} | "
                     f"{rows[0][1] / wall:.2f}x | {train:.1f} | "
                     f"{(wall * concurrent - train) / trials:.2f} |")
    return lines


PARTS = {"pruning": ("pruning", "Pruning rules: compute saved, hypervolume lost, overhead",
                     _pruning),
         "scale": ("scale", "Workers on one storage", _scale),
         "ray": ("ray", "Ray Tune backend", _ray)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=tuple(PARTS), required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--ray-trials", type=int, default=20)
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="also time workers on this PostgreSQL storage")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _ = load_task("mnist1d").teacher  # train or load once, outside every measurement
    key, heading, run = PARTS[args.part]
    with tempfile.TemporaryDirectory() as tmp:
        body = run(args, Path(tmp))
    argv = " ".join(a if "://" not in a else "URL" for a in sys.argv[1:])
    command = f"python experiments/bench_search.py {argv}".strip()
    write_section(RESULTS, title=TITLE, key=key, heading=heading, command=command, body=body)
    print("\n".join(body))


if __name__ == "__main__":
    main()
