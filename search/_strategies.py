"""Search strategies by name: each is a seeded Optuna sampler.

Choices are suggested as integer indices into their ordered option lists (see
``search/_trial.py``), so model-based samplers see that a width of 0.5 lies
between 0.25 and 0.75. Every trial sets its limit violations with
``Trial.set_constraint``, so samplers that handle constraints (TPE, GP, NSGA-II/III)
learn where the infeasible region is from the students rejected there.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna

__all__ = ["STRATEGIES", "make_sampler"]

SamplerFactory = Callable[[int, int], optuna.samplers.BaseSampler]


def _startup(n_trials: int) -> int:
    return max(4, min(10, n_trials // 4))


def _population(n_trials: int) -> int:
    return max(4, min(50, n_trials // 4))


def _tpe(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                      n_startup_trials=_startup(n_trials))


def _random(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _qmc(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)


def _gp(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.GPSampler(seed=seed, n_startup_trials=_startup(n_trials),
                                     warn_independent_sampling=False)


def _nsga2(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=_population(n_trials))


def _nsga3(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIIISampler(seed=seed, population_size=_population(n_trials))


STRATEGIES: dict[str, SamplerFactory] = {
    "tpe": _tpe,
    "random": _random,
    "qmc": _qmc,
    "gp": _gp,
    "nsga2": _nsga2,
    "nsga3": _nsga3,
}
"""Strategy name -> factory ``(seed, n_trials) -> sampler``.

Adding a strategy is one entry here.
"""


def make_sampler(name: str, *, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """The seeded sampler of a strategy, sized for a study of ``n_trials`` trials."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return factory(seed, n_trials)
