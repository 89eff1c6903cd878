"""Conformance suite: every registered strategy passes the same tests on a toy problem.

No training and no torch model: the objective is a closed-form function of the
choice indices, the way protege suggests them.
"""

from __future__ import annotations

import optuna
import pytest

from protege.search import STRATEGIES, make_sampler

CHOICES = {"width.a": (0.25, 0.5, 0.75, 1.0), "width.b": (0.25, 0.5, 0.75, 1.0),
           "width.c": (0.5, 1.0)}


def toy(trial: optuna.Trial) -> tuple[float, float]:
    arch = {name: options[trial.suggest_int(name, 0, len(options) - 1)]
            for name, options in CHOICES.items()}
    cost = arch["width.a"] ** 2 + arch["width.b"] + 0.5 * arch["width.c"]
    trial.set_constraint("macs", cost - 1.8)
    if cost > 2.2:
        raise optuna.TrialPruned("over the MAC limit")
    accuracy = 1.0 - 0.3 / (1.0 + arch["width.a"] + 2 * arch["width.b"])
    return accuracy, cost


def run(name: str, *, seed: int = 0, n_trials: int = 14) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=make_sampler(name, seed=seed, n_trials=n_trials))
    study.optimize(toy, n_trials=n_trials)
    return study


@pytest.fixture(params=sorted(STRATEGIES))
def strategy(request: pytest.FixtureRequest) -> str:
    return request.param


def test_runs_every_trial_through_pruned_ones(strategy):
    study = run(strategy)
    states = [t.state for t in study.trials]
    assert len(states) == 14
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert study.best_trials, "a front must exist"


def test_same_seed_same_students(strategy):
    first = [t.params for t in run(strategy, seed=3, n_trials=8).trials]
    second = [t.params for t in run(strategy, seed=3, n_trials=8).trials]
    assert first == second


def test_suggestions_stay_in_the_space(strategy):
    for trial in run(strategy, n_trials=8).trials:
        for name, options in CHOICES.items():
            assert 0 <= trial.params[name] < len(options)


def test_unknown_strategy_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown strategy 'annealing'; known: tpe"):
        make_sampler("annealing", seed=0, n_trials=5)
