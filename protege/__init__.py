"""protege: find the smallest, fastest student network a trained teacher can teach.

The public surface is small and Optuna-shaped: :func:`create_study` returns a
:class:`Study` (``optimize``, ``stop``, ``trials``, ``front``, ``pick``, ``finetune``,
``export``, ``finish``), and :func:`search` does it all in one typed call that takes a
:class:`Config`. Also :class:`Constraints`, :func:`load_student` and
:func:`set_verbosity`. The subsystems live in ``protege.spaces``,
``protege.distill``, ``protege.estimators``, ``protege.search`` and
``protege.experiments``.

The facade is lazy: ``import protege.spaces`` loads no Optuna, Lightning or
matplotlib; the controller is imported on first use of a name below.

``protege.search`` names two things: the function :func:`search` here, and the
controller's subpackage (``from protege.search import Config``). Python binds a
subpackage to its parent's attribute whenever it is first imported, so the facade's
module type holds ``search`` as a data descriptor: ``protege.search`` is always the
function, and the subpackage is reached with ``from protege.search import ...`` (or
``sys.modules``), as everywhere in protege.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from protege._logging import get_logger, set_verbosity

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

    from protege.distill import DistillConfig
    from protege.search import (
        Config,
        Constraints,
        Outcome,
        SearchResult,
        Study,
        TrialCallback,
        TrialRecord,
        create_study,
        load_student,
    )

    Data = Dataset | DataLoader

__version__ = "0.2.0"

_LAZY = {
    "Config": "protege.search",
    "Constraints": "protege.search",
    "Outcome": "protege.search",
    "SearchResult": "protege.search",
    "Study": "protege.search",
    "TrialRecord": "protege.search",
    "create_study": "protege.search",
    "load_student": "protege.search",
    "DistillConfig": "protege.distill",
}

__all__ = [
    "Config",
    "Constraints",
    "DistillConfig",
    "Outcome",
    "SearchResult",
    "Study",
    "TrialRecord",
    "create_study",
    "get_logger",
    "load_student",
    "search",
    "set_verbosity",
]


def __getattr__(name: str) -> Any:
    """Import the controller's names on first use (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'protege' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


def search(teacher: nn.Module, *, train: Data, val: Data, example_input: torch.Tensor,
           test: Data | None = None, config: Config | None = None,
           out: str | Path = "runs/search", callbacks: Sequence[TrialCallback] = (),
           accelerator: str = "cpu") -> SearchResult:
    """Find the smallest student of ``teacher`` that meets ``config.constraints``.

    :func:`create_study`, then ``optimize`` until the config's ``n_trials`` (or
    ``timeout``), then ``finish`` (front, pick, fine-tune, ONNX, report). Running again
    with the same ``out`` resumes. The arguments are those of :func:`create_study`,
    plus ``callbacks`` called with the study and each trial's record.

    Raises:
        TypeError, ValueError: If the input cannot work (nothing is written).
        protege.search.TooManyFailures: If most of the first trials failed.
    """
    from protege.search import search as run

    return run(teacher, train=train, val=val, example_input=example_input, test=test,
               config=config, out=out, callbacks=callbacks, accelerator=accelerator)


class _Facade(types.ModuleType):
    """Keeps ``protege.search`` bound to the function when the subpackage is imported."""

    @property
    def search(self) -> Any:
        return _search

    @search.setter
    def search(self, value: Any) -> None:  # the import system binding the subpackage
        pass


_search = search
sys.modules[__name__].__class__ = _Facade
