"""Distillation losses. Each returns a dict of named terms so every part can be logged.

``loss`` is what is minimised; every other term is detached and only logged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "LogitLoss", "ce_loss", "dkd_loss", "hint_loss", "hinton_loss",
           "register_loss"]
"""Logit losses ``distill.loss`` may name."""


def ce_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Plain cross-entropy on the labels: training without the teacher (the ablation).

    Returns:
        ``loss`` and ``task_loss`` (the same value) and a zero ``kd_loss``.
    """
    task_loss = F.cross_entropy(student_logits, targets)
    return {"loss": task_loss, "task_loss": task_loss.detach(),
            "kd_loss": torch.zeros((), device=task_loss.device)}


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


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per batch from log-probabilities (``p`` is the target)."""
    return (p_log.exp() * (p_log - q_log)).sum(dim=-1).mean()


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022).

    Hinton's KL splits into a target-class term (TCKD: the binary "target vs the
    rest" distributions) and a non-target term (NCKD: the distribution among the
    wrong classes, weighted in KD by ``1 - p_target`` of the teacher, which is what
    suppresses it for confident teachers). DKD weighs the two freely:
    ``loss = CE(s, y) + T^2 * (alpha * TCKD + beta * NCKD)``.

    Args:
        alpha: Weight of the target-class term.
        beta: Weight of the non-target term (the paper uses 8 on CIFAR-100).

    Returns:
        ``loss``, ``task_loss``, ``kd_loss`` (the weighted KD part), ``tckd_loss``
        and ``nckd_loss`` (each scaled by ``T^2``).
    """
    t = temperature
    task_loss = F.cross_entropy(student_logits, targets)
    target = F.one_hot(targets, student_logits.shape[-1]).bool()
    s_log = F.log_softmax(student_logits / t, dim=-1)
    t_log = F.log_softmax(teacher_logits / t, dim=-1)
    # Binary (target, rest) distributions; log(1 - p) as a log-sum-exp over the others.
    neg_inf = torch.finfo(s_log.dtype).min
    s_bin = torch.stack([s_log.masked_fill(~target, neg_inf).logsumexp(-1),
                         s_log.masked_fill(target, neg_inf).logsumexp(-1)], dim=-1)
    t_bin = torch.stack([t_log.masked_fill(~target, neg_inf).logsumexp(-1),
                         t_log.masked_fill(target, neg_inf).logsumexp(-1)], dim=-1)
    tckd = _kl(t_bin, s_bin) * t**2
    # Distributions among the non-target classes only (target masked out before softmax).
    s_non = F.log_softmax(student_logits / t - 1000.0 * target, dim=-1)
    t_non = F.log_softmax(teacher_logits / t - 1000.0 * target, dim=-1)
    nckd = _kl(t_non, s_non) * t**2
    kd_loss = alpha * tckd + beta * nckd
    return {"loss": task_loss + kd_loss, "task_loss": task_loss.detach(),
            "kd_loss": kd_loss.detach(), "tckd_loss": tckd.detach(), "nckd_loss": nckd.detach()}


def hint_loss(
    student_features: Mapping[str, torch.Tensor],
    teacher_features: Mapping[str, torch.Tensor],
) -> torch.Tensor:
    """Mean over layers of the normalised squared error of (adapted) student features.

    Each layer's MSE is divided by the mean square of the teacher's feature, so the
    term is scale-free: 1 means "no better than predicting zeros", whatever the
    layer's magnitude. Student features must already match the teacher's shapes.
    """
    terms = []
    for name, teacher in teacher_features.items():
        student = student_features[name]
        scale = teacher.detach().pow(2).mean().clamp_min(1e-8)
        terms.append(F.mse_loss(student, teacher.detach()) / scale)
    if not terms:
        raise ValueError("hint_loss needs at least one layer")
    return torch.stack(terms).mean()


LogitLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any], dict[str, torch.Tensor]]
"""``(student_logits, teacher_logits, targets, config) -> terms``: a logit loss of the
registry; ``config`` is the :class:`~protege.distill.DistillConfig` (its weights and
temperature, resolved); ``terms["loss"]`` is minimised, the other terms are logged."""

LOSSES: dict[str, LogitLoss] = {
    "hinton": lambda s, t, y, c: hinton_loss(s, t, y, temperature=c.temperature, alpha=c.alpha),
    "dkd": lambda s, t, y, c: dkd_loss(s, t, y, temperature=c.temperature, alpha=c.dkd_alpha,
                                       beta=c.dkd_beta),
    "ce": lambda s, t, y, c: ce_loss(s, y),
}
"""The logit losses ``distill.loss`` may name: Hinton et al. 2015 (``hinton``), decoupled
KD of Zhao et al. 2022 (``dkd``), and plain cross-entropy on the labels (``ce``)."""


def register_loss(name: str, loss: LogitLoss) -> None:
    """Make ``loss`` available as ``distill.loss: <name>``.

    Raises:
        ValueError: If ``name`` is taken.
    """
    if name in LOSSES:
        raise ValueError(f"a loss named {name!r} is registered already")
    LOSSES[name] = loss
