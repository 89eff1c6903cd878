"""protege: find the smallest, fastest student network a trained teacher can teach.

The public surface is small: :func:`search` (``protege.search(...)``),
:class:`Constraints`, :func:`load_student`, and :func:`set_verbosity`. The
subsystems live in ``protege.spaces``, ``protege.distill``,
``protege.estimators``, ``protege.search`` and ``protege.experiments``.
"""

from __future__ import annotations

from protege import search
from protege._logging import get_logger, set_verbosity
from protege.distill import DistillConfig
from protege.search import Config, Constraints, SearchResult, load_student

__version__ = "0.1.0"

__all__ = [
    "Config",
    "Constraints",
    "DistillConfig",
    "SearchResult",
    "get_logger",
    "load_student",
    "search",
    "set_verbosity",
]
