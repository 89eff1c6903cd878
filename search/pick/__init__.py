"""The pick: which student a study returns, its final fine-tune, and how sure it is."""

from protege.search.pick._pick import (
    accuracy_floor,
    bisect,
    cheapest_within,
    choose,
    cost_of,
    finetune_student,
    pick_cost,
    spread_front,
    validation_margin,
)

__all__ = ["accuracy_floor", "bisect", "cheapest_within", "choose", "cost_of", "finetune_student",
           "pick_cost", "spread_front", "validation_margin"]
