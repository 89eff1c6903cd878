"""The search controller: strategies, limits, the trial function, the front and the pick.

The module is callable: ``protege.search(teacher, train=..., val=..., example_input=...)``
runs a study (see :func:`protege.search.search`).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from protege.search._api import search
from protege.search._config import (
    Config,
    ConfigError,
    Constraints,
    PruningConfig,
    apply_overrides,
    load_config,
)
from protege.search._export import load_student
from protege.search._onnx import (
    ExportCheck,
    Int8Result,
    ModelFigures,
    export_onnx,
    export_torchscript,
    quantize_int8,
)
from protege.search._pareto import hypervolume, pareto_indices
from protege.search._pruning import CurveRule, GainRule, PredictorRule, PruningRule
from protege.search._records import Pick, TeacherProfile, TrialRecord
from protege.search._report import write_report
from protege.search._retrain import finetune_trial
from protege.search._run import RunFolder, load_run, read_records, trial_outcome
from protege.search._strategies import STRATEGIES, make_sampler
from protege.search._study import SearchResult, TooManyFailures, TrialCallback, run_search

__all__ = [
    "STRATEGIES",
    "Config",
    "ConfigError",
    "Constraints",
    "CurveRule",
    "ExportCheck",
    "GainRule",
    "Int8Result",
    "ModelFigures",
    "Pick",
    "PredictorRule",
    "PruningConfig",
    "PruningRule",
    "RunFolder",
    "SearchResult",
    "TeacherProfile",
    "TooManyFailures",
    "TrialCallback",
    "TrialRecord",
    "apply_overrides",
    "export_onnx",
    "export_torchscript",
    "finetune_trial",
    "hypervolume",
    "load_config",
    "load_run",
    "load_student",
    "make_sampler",
    "pareto_indices",
    "quantize_int8",
    "read_records",
    "run_search",
    "search",
    "trial_outcome",
    "write_report",
]


class _CallableModule(types.ModuleType):
    """Lets ``protege.search(...)`` run a study while ``protege.search.X`` stays a module."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
