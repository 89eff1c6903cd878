"""Settings of the distillation every trial and the final fine-tune run."""

from __future__ import annotations

import dataclasses

__all__ = ["DistillConfig"]


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {message}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """How each student is distilled from the teacher's cached outputs.

    Args:
        alpha: Weight of the soft-target (KD) term; ``1 - alpha`` weighs the hard labels.
        temperature: Softmax temperature of the soft targets.
        epochs: Epochs of the brief training every trial gets.
        finetune_epochs: Epochs of the final distillation of the pick.
        batch_size: Training batch size.
        lr: Peak learning rate of the one-cycle AdamW schedule.
        weight_decay: AdamW weight decay.
    """

    alpha: float = 0.9
    temperature: float = 4.0
    epochs: int = 5
    finetune_epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        _check(0.0 <= self.alpha <= 1.0, "distill.alpha", f"must be in [0, 1], got {self.alpha}")
        _check(self.temperature > 0, "distill.temperature",
               f"must be positive, got {self.temperature}")
        _check(self.epochs >= 1, "distill.epochs", f"must be >= 1, got {self.epochs}")
        _check(self.finetune_epochs >= 0, "distill.finetune_epochs",
               f"must be >= 0, got {self.finetune_epochs}")
        _check(self.batch_size >= 1, "distill.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.lr > 0, "distill.lr", f"must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, "distill.weight_decay",
               f"must be >= 0, got {self.weight_decay}")
