"""Search strategies by name: each is an Optuna sampler with settings for categorical spaces."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

__all__ = ["STRATEGIES", "make_sampler"]


def _tpe(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=max(4, min(10, n_trials // 4)),
        )


def _random(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _nsga2(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, n_trials // 4)))


STRATEGIES: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {
    "tpe": _tpe,
    "random": _random,
    "nsga2": _nsga2,
}
"""Strategy name -> factory ``(seed, n_trials) -> sampler``. Add a strategy with one entry."""


def make_sampler(name: str, *, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """The seeded sampler of a strategy, sized for a study of ``n_trials`` trials."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    return factory(seed, n_trials)
