"""BatchNorm statistics recalibrated on training data, with no gradient step.

A student cut from the teacher (channels removed, blocks dropped, layers factored)
keeps the teacher's BatchNorm running statistics, which no longer match the
activations its cut layers produce. Re-estimating them on a few hundred training
samples is what makes an untrained student's accuracy worth ranking: Once-for-All
(Cai et al., 2020) and BigNAS (Yu et al., 2020) do it for every sub-network before
scoring it; NNI and ModelOpt's FastNAS do the same for pruned subnets.
"""

from __future__ import annotations

import torch
from torch import nn

from protege.common import eval_mode

__all__ = ["recalibrate_batchnorm"]

_NORMS = (nn.modules.batchnorm._BatchNorm,)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, *,
                          batch_size: int = 256) -> int:
    """Re-estimate every BatchNorm layer's running mean and variance on ``inputs``.

    The statistics are reset and then averaged over all of ``inputs`` (a cumulative
    average: ``momentum=None`` while it runs, restored after), with only the norm
    layers in training mode (dropout stays off). No parameter changes. The model is
    left in eval mode.

    Args:
        model: The network, on any device; ``inputs`` are moved to it.
        inputs: ``(samples, *input_shape)`` training inputs, any dtype the model takes.
        batch_size: Samples per forward pass; a last batch of one sample joins the
            one before (BatchNorm cannot normalise one sample after a linear layer).

    Returns:
        How many BatchNorm layers were recalibrated (0: the model has none, and is
        left as it was).
    """
    from protege.distill._trainer import batch_starts

    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not norms or len(inputs) == 0:
        model.eval()
        return 0
    device = next(model.parameters(), torch.empty(0)).device
    momenta = [m.momentum for m in norms]
    with eval_mode(model):
        try:
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over every batch
                m.train()
            for rows in batch_starts(len(inputs), batch_size):
                model(inputs[rows.start:rows.stop].to(device))
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
    model.eval()
    return len(norms)
