"""Cost of a student: MACs and parameters (thop, cross-checked with PyTorch's counter)."""

from protege.estimators._macs import count_macs, count_macs_torch, count_params

__all__ = ["count_macs", "count_macs_torch", "count_params"]
