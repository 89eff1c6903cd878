"""The Ray Tune backend: the same student evaluation, scheduled by Ray.

Ray Tune calls a function trainable per trial, with Optuna as its searcher (the
same seeded sampler as the in-process backend, on the same run-folder storage)
and ASHA as its scheduler. Results come back as protege's own trial records, so
the run folder looks the same whichever backend ran. Ray adds a per-trial cost
(``experiments/results/search.md``): it pays off on a cluster, not for
second-long trials on one machine.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from pathlib import Path
from typing import Any

from protege.search._config import Config
from protege.search._objective import StudentEvaluator
from protege.search._records import TrialRecord
from protege.search._storage import open_storage
from protege.search._strategies import make_sampler

__all__ = ["run_ray"]

logger = logging.getLogger(__name__)

_EXPERIMENT = "ray"


def _import_ray() -> Any:
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError as exc:
        raise ImportError("backend: ray needs Ray Tune: pip install 'protege[ray]'") from exc
    return ray


def _trainable(params: dict[str, Any], evaluator: StudentEvaluator) -> None:
    """One Ray trial: the same build / check / distil as the Optuna backend."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(evaluator.config.ray.cpus_per_trial)))
    arch = evaluator.space.repair({name: options[int(params[name])]
                                   for name, options in evaluator.space.choices.items()})
    # Ray's trial ids are random: seed from the architecture so reruns repeat.
    number = zlib.crc32(json.dumps(arch, sort_keys=True).encode()) % 1_000_003
    student, costs = evaluator.build(arch, number)
    base = {**costs, "arch": arch}
    reason = evaluator.limits.reason(costs)
    if reason is not None:
        # The searcher needs values: a rejected student is the worst possible accuracy.
        tune.report({"accuracy": 0.0, "rejected": reason, "history": [], **base})
        return
    history: list[float] = []
    start = time.perf_counter()

    def report(epoch: int, accuracy: float) -> None:
        history.append(accuracy)
        tune.report({"accuracy": accuracy, "history": list(history),
                     "train_seconds": round(time.perf_counter() - start, 3), **base})

    evaluator.train(student, number, report)


def _record(number: int, result: Any, epochs: int) -> TrialRecord:
    metrics = result.metrics or {}
    arch = metrics.get("arch") or {}
    history = tuple(metrics.get("history") or ())
    common: dict[str, Any] = {"number": number, "arch": arch, "history": history,
                              "macs": _int(metrics.get("macs")),
                              "params": _int(metrics.get("params")),
                              "latency_ms": metrics.get("latency"),
                              "train_seconds": metrics.get("train_seconds")}
    if result.error is not None:
        lines = str(result.error).strip().splitlines() or [type(result.error).__name__]
        return TrialRecord(state="failed", error=lines[-1].strip(), **common)
    if metrics.get("rejected"):
        return TrialRecord(state="pruned", pruned_reason=metrics["rejected"], **common)
    done = len(history)
    if done < epochs:
        return TrialRecord(state="pruned", accuracy=None, **common,
                           pruned_reason=f"asha: stopped after epoch {done}/{epochs}")
    return TrialRecord(state="complete", accuracy=metrics.get("accuracy"), **common)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def run_ray(evaluator: StudentEvaluator, *, config: Config, out: Path) -> list[TrialRecord]:
    """Run the study's trials under Ray Tune and return their records by trial order.

    Running again with the same ``out`` restores the Tune experiment (and its
    searcher) and runs only the missing trials.
    """
    ray = _import_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    if not ray.is_initialized():
        ray.init(address=config.ray.address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    costs = list(config.objectives[1:])
    searcher = OptunaSearch(
        metric=["accuracy", *costs], mode=["max"] + ["min"] * len(costs),
        sampler=make_sampler(config.strategy, seed=config.seed, n_trials=config.n_trials),
        storage=open_storage(config.storage, out), study_name="protege-ray", seed=config.seed,
    )
    epochs = config.distill.trial_epochs(len(evaluator.outputs.targets))
    scheduler = (ASHAScheduler(metric="accuracy", mode="max", max_t=epochs, grace_period=1)
                 if config.ray.scheduler == "asha" else FIFOScheduler())
    trainable = tune.with_resources(tune.with_parameters(_trainable, evaluator=evaluator),
                                    {"cpu": config.ray.cpus_per_trial})
    path = (out / _EXPERIMENT).resolve()
    if tune.Tuner.can_restore(str(path)):
        logger.info("restoring the Ray Tune experiment in %s", path)
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        space = {name: tune.randint(0, len(options))
                 for name, options in evaluator.space.choices.items()}
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, num_samples=config.n_trials,
                max_concurrent_trials=config.ray.max_concurrent,
                time_budget_s=config.timeout,
                # A fresh actor per trial costs a process start and the imports
                # (seconds); a reused one keeps them.
                reuse_actors=True),
            run_config=tune.RunConfig(name=_EXPERIMENT, storage_path=str(out.resolve()),
                                      verbose=0),
        )
    grid = tuner.fit()
    results: list[Any] = sorted((grid[i] for i in range(len(grid))), key=_creation_order)
    return [_record(i, result, epochs) for i, result in enumerate(results)]


def _creation_order(result: Any) -> int:
    """Tune names trial folders ``<trainable>_<id>_<n>_<params>``: n counts trials made."""
    match = re.search(r"_[0-9a-f]{5,}_(\d+)_", Path(str(result.path)).name)
    return int(match.group(1)) if match else 0
