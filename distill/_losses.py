"""Distillation losses. Each returns a dict of named terms so every part can be logged."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["hinton_loss"]


def hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> dict[str, torch.Tensor]:
    """Hinton et al.'s knowledge distillation loss.

    ``loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)``;
    the ``T^2`` factor keeps the soft term's gradients on the scale of the hard one.

    Returns:
        ``loss`` (what is minimised), ``task_loss`` (cross-entropy on the labels)
        and ``kd_loss`` (the scaled soft-target term).
    """
    task_loss = F.cross_entropy(student_logits, targets)
    kd_loss = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * temperature**2
    loss = alpha * kd_loss + (1.0 - alpha) * task_loss
    return {"loss": loss, "task_loss": task_loss.detach(), "kd_loss": kd_loss.detach()}
