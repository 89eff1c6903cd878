"""Search spaces derived from a teacher's graph, and students built from them.

``derive(teacher, example_input)`` finds the choices; ``SearchSpace.materialize``
builds a student with weights inherited from the teacher.
"""

from protege.spaces._groups import ChannelGroup, find_channel_groups
from protege.spaces._space import LEVELS, WIDTH_OPTIONS, Architecture, SearchSpace, derive

__all__ = [
    "LEVELS",
    "WIDTH_OPTIONS",
    "Architecture",
    "ChannelGroup",
    "SearchSpace",
    "derive",
    "find_channel_groups",
]
