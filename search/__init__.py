"""The search controller: strategies, limits, the one trial function, rules, backends,
the front, and the study that composes them.

``protege.create_study`` / ``protege.search`` are the entry points (re-exported by
the facade). What a run writes and returns has its own subpackages:
``protege.search.pick`` (which student is returned), ``protege.search.export``
(student files, ONNX, int8), ``protege.search.runfolder`` (reading a run folder
back) and ``protege.search.report`` (the report and plots).
"""

from __future__ import annotations

from protege.search._config import (
    SOURCE_KEYS,
    Config,
    ConfigError,
    Constraints,
    OneShotConfig,
    RayConfig,
    RulesConfig,
    RungsConfig,
    SpaceConfig,
    apply_overrides,
    load_config,
)
from protege.search._pareto import hypervolume, pareto_indices
from protege.search._profile import TeacherProfile
from protege.search._records import Outcome, Pick, TrialRecord
from protege.search._rules import CurveRule, GainRule, PredictorRule, TrialRule
from protege.search._rungs import (
    LimitRule,
    Promotion,
    next_promotion,
    predicted_gap,
    promotion_order,
    uniform_ladder,
)
from protege.search._stages import create_study, search
from protege.search._storage import StorageError
from protege.search._strategies import STRATEGIES, make_sampler
from protege.search._study import SearchResult, Study, TooManyFailures, TrialCallback
from protege.search._trial import TrialResult, run_trial
from protege.search.export import (
    ExportCheck,
    Int8Result,
    ModelFigures,
    export_onnx,
    export_torchscript,
    load_student,
    quantize_int8,
)
from protege.search.report import write_report
from protege.search.runfolder import RunFolder, load_run, read_records

__all__ = [
    "SOURCE_KEYS",
    "STRATEGIES",
    "Config",
    "ConfigError",
    "Constraints",
    "CurveRule",
    "ExportCheck",
    "GainRule",
    "Int8Result",
    "LimitRule",
    "ModelFigures",
    "OneShotConfig",
    "Outcome",
    "Pick",
    "PredictorRule",
    "RayConfig",
    "Promotion",
    "RulesConfig",
    "RunFolder",
    "RungsConfig",
    "SearchResult",
    "SpaceConfig",
    "StorageError",
    "Study",
    "TeacherProfile",
    "TooManyFailures",
    "TrialCallback",
    "TrialRecord",
    "TrialResult",
    "TrialRule",
    "apply_overrides",
    "create_study",
    "export_onnx",
    "export_torchscript",
    "hypervolume",
    "load_config",
    "load_run",
    "load_student",
    "make_sampler",
    "next_promotion",
    "pareto_indices",
    "predicted_gap",
    "promotion_order",
    "quantize_int8",
    "read_records",
    "run_trial",
    "search",
    "uniform_ladder",
    "write_report",
]
