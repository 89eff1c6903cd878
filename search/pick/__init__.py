"""The pick: which student a study returns, and its final fine-tune."""

from protege.search.pick._pick import accuracy_floor, bisect, choose, finetune_student

__all__ = ["accuracy_floor", "bisect", "choose", "finetune_student"]
