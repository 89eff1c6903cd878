"""Search spaces derived from a teacher's graph, and students built from them.

``derive(teacher, example_input, level=...)`` finds the choices (width per group of
coupled channels, depth per residual block, rank per large layer);
``SearchSpace.materialize`` builds a student with weights inherited from the teacher;
``Supernet`` runs every student as a slice of one set of shared weights (one-shot search).
"""

from protege.spaces._blocks import ResidualBlock, Shortcut
from protege.spaces._derive import LEVELS, TIME_LIMIT_S, WIDTH_OPTIONS, derive
from protege.spaces._groups import ChannelGroup, find_channel_groups
from protege.spaces._lowrank import RANK_OPTIONS, factorize, truncate
from protege.spaces._space import Architecture, SearchSpace
from protege.spaces._supernet import NotASlice, Supernet

__all__ = [
    "LEVELS",
    "RANK_OPTIONS",
    "TIME_LIMIT_S",
    "WIDTH_OPTIONS",
    "Architecture",
    "ChannelGroup",
    "NotASlice",
    "ResidualBlock",
    "SearchSpace",
    "Shortcut",
    "Supernet",
    "derive",
    "factorize",
    "find_channel_groups",
    "truncate",
]
