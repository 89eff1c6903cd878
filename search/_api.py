"""``protege.search(...)``: one call from a teacher and its data to the front and the pick."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from protege.distill import DistillConfig
from protege.search._config import LEVEL_EPOCHS, Config, Constraints
from protege.search._study import SearchResult, TrialCallback, run_search

__all__ = ["search"]


def search(
    teacher: nn.Module,
    *,
    train: Dataset | DataLoader,
    val: Dataset | DataLoader,
    example_input: torch.Tensor,
    test: Dataset | DataLoader | None = None,
    constraints: Constraints | None = None,
    level: int = 1,
    strategy: str = "tpe",
    n_trials: int = 20,
    seed: int = 0,
    timeout: float | None = None,
    distill: DistillConfig | None = None,
    out: str | Path = "runs/search",
    callbacks: Sequence[TrialCallback] = (),
    accelerator: str = "cpu",
) -> SearchResult:
    """Find the smallest student of ``teacher`` that meets ``constraints``.

    Args:
        teacher: The trained network.
        train: Training data yielding ``(input, label)``; the teacher's outputs on
            it are computed once and cached in the run folder.
        val: Validation data: every trial's accuracy and the accuracy limit use it.
        example_input: A batch the teacher accepts, for tracing and counting MACs.
        test: Held-out data, used only to report the pick's final accuracy.
        constraints: Limits of the pick; by default at most one point of accuracy lost.
        level: Size of the search space.
        strategy: ``tpe``, ``random`` or ``nsga2``.
        n_trials: Trials in the study; an existing study in ``out`` is resumed.
        seed: Seeds the sampler and every trial.
        timeout: Optional bound of the search in seconds.
        distill: Distillation settings of the trials and the final fine-tune; by
            default the level's preset epochs (4, 5, 6 for levels 1, 2, 3).
        out: The run folder.
        callbacks: Called with each trial's record as it finishes.
        accelerator: ``cpu``, ``gpu`` or ``auto``.

    Returns:
        The trials, the Pareto front, its hypervolume and the fine-tuned pick.
    """
    config = Config(
        task="custom", level=level, strategy=strategy, n_trials=n_trials, seed=seed,
        timeout=timeout, constraints=constraints or Constraints(),
        distill=distill or DistillConfig(epochs=LEVEL_EPOCHS.get(level, 5)),
    )
    return run_search(teacher, train=train, val=val, example_input=example_input, test=test,
                      config=config, out=out, callbacks=callbacks, accelerator=accelerator)
