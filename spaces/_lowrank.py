"""Low-rank decomposition of large convolutions and linear layers.

A layer with weight ``W`` (``out x in x k...``) is seen as the matrix
``out x (in * prod(k))`` and factorised by truncated SVD, ``W ~ (U_r S_r^1/2)
(S_r^1/2 V_r^T)`` (from the eigen-decomposition of the smaller Gram matrix).
A convolution becomes a ``k x k`` convolution with ``r``
outputs (same stride, padding, dilation) followed by a ``1 x 1`` convolution to
``out`` channels that carries the bias; a linear layer becomes two linear layers.
At full rank the product is ``W`` itself, so the student computes what the layer
did. The pair costs ``r * (in * k^2 + out)`` MACs per output position against
``out * in * k^2``, so only ranks below ``out * in * k^2 / (in * k^2 + out)`` pay.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

__all__ = ["RANK_OPTIONS", "RankCandidate", "factorize", "rank_candidates", "truncate"]

RANK_OPTIONS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
"""Rank ratios offered per large layer; 1.0 keeps the layer unfactorised."""

MIN_RANK_PARAMS = 1024
"""A layer is large enough to decompose from this many weights (and full rank >= 8)."""

MAX_RANK_WEIGHTS = 1 << 24
"""Layers with more weights than this (VGG's 25088 x 4096 head) get no rank choice: their
factorisation at every ``materialize`` would take seconds to tens of seconds on a CPU."""

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclasses.dataclass(frozen=True)
class RankCandidate:
    """A layer that low-rank factorisation can make cheaper.

    Attributes:
        name: Qualified module name in the teacher.
        options: Rank ratios that reduce the layer's MACs at the teacher's width, one per
            distinct rank, and 1.0.
    """

    name: str
    options: tuple[float, ...]


def _shape(module: nn.Module) -> tuple[int, int] | None:
    """``(out, in * prod(kernel))`` of a layer that can be factorised, else None."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    if isinstance(module, _CONVS) and module.groups == 1:
        return module.out_channels, module.in_channels * math.prod(module.kernel_size)
    return None


def rank_of(module: nn.Module, ratio: float) -> int | None:
    """Rank the ratio gives for this layer, or None where factorising would not pay."""
    shape = _shape(module)
    if shape is None or ratio >= 1.0:
        return None
    out, fan_in = shape
    rank = max(1, int(round(ratio * min(out, fan_in))))
    return rank if rank * (fan_in + out) < out * fan_in else None


def rank_candidates(
    modules: dict[str, nn.Module],
    *,
    options: tuple[float, ...] = RANK_OPTIONS,
    min_params: int = MIN_RANK_PARAMS,
) -> list[RankCandidate]:
    """Layers (of those named) large enough to decompose, with the ratios that pay.

    Args:
        modules: Layers that ran in the teacher's forward pass, by name.
        options: Ratios to consider; 1.0 is always offered.
        min_params: Weights a layer needs to count as large.
    """
    found = []
    for name, module in modules.items():
        shape = _shape(module)
        if (shape is None or not min_params <= math.prod(shape) <= MAX_RANK_WEIGHTS
                or min(shape) < 8):
            continue
        by_rank: dict[int, float] = {}  # ratios that give the same rank build one student
        for ratio in sorted(options, reverse=True):
            rank = rank_of(module, ratio) if ratio < 1.0 else None
            if rank is not None:
                by_rank[rank] = ratio  # descending: the smallest ratio of a rank wins
        paying = tuple(sorted(by_rank.values()))
        if paying:
            found.append(RankCandidate(name, paying + (1.0,)))
    return found


def _top_eigen(matrix: torch.Tensor, rank: int) -> tuple[bool, torch.Tensor, torch.Tensor]:
    """``(wide, values, vectors)``: the ``rank`` largest eigenvalues (descending) and their
    eigenvectors (columns) of the smaller Gram matrix of ``matrix`` (``m x n``): of
    ``M M^T`` when ``wide`` (``m <= n``: left singular vectors), else of ``M^T M`` (right
    singular vectors). The values are the squared singular values."""
    wide = matrix.shape[0] <= matrix.shape[1]
    gram = matrix @ matrix.T if wide else matrix.T @ matrix
    threads = torch.get_num_threads()
    # LAPACK's threaded eigh spins badly on busy cores (200x slower measured on 2 shared
    # cores); these matrices are small enough for one thread.
    torch.set_num_threads(1)
    try:
        values, vectors = torch.linalg.eigh(gram)
    finally:
        torch.set_num_threads(threads)
    return wide, values[-rank:].flip(0), vectors[:, -rank:].flip(1)


def truncate(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """``weight`` (``out x in x k...``) projected on its top ``rank`` singular vectors:
    the rank-``rank`` truncated SVD of the ``out x (in * prod(k))`` matrix, in the
    weight's shape and dtype. It equals the product of :func:`factorize`'s two layers.

    The singular vectors are computed without gradient (in float64, as ``factorize``
    does); the projection is linear in ``weight``, so a loss's gradient reaches
    ``weight`` projected on the same subspace (the singular vectors held fixed). This is
    how a weight-sharing supernet trains its low-rank students on the shared weights.
    """
    matrix = weight.reshape(weight.shape[0], -1)
    with torch.no_grad():
        wide, _, top = _top_eigen(matrix.detach().double(), rank)
        top = top.to(weight.dtype)
    projected = top @ (top.T @ matrix) if wide else (matrix @ top) @ top.T
    return projected.reshape(weight.shape)


def _balanced_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A (rank x n)`` and ``B (m x rank)`` with ``B @ A`` the rank-``rank`` truncated SVD.

    Works from the eigen-decomposition of the smaller Gram matrix, an order of magnitude
    faster than an SVD on CPU. With ``U_r`` the top left singular vectors, ``B @ A`` is
    ``U_r U_r^T M``, the SVD truncation, whatever the (clamped) singular values; both
    factors carry ``sqrt(sigma)`` so neither is badly scaled.
    """
    wide, values, top = _top_eigen(matrix, rank)
    sigma = values.clamp_min(0).sqrt()
    sigma = sigma.clamp_min(float(sigma[0]) * 1e-6 + 1e-30).sqrt()  # sqrt(sigma), never 0
    if wide:
        return (top.T @ matrix) / sigma[:, None], top * sigma[None, :]
    return sigma[:, None] * top.T, (matrix @ top) / sigma[None, :]


def factorize(module: nn.Module, rank: int) -> nn.Sequential:
    """Two layers whose product is the rank-``rank`` truncated SVD of ``module``.

    Args:
        module: A ``Linear`` or an ungrouped ``Conv1d/2d/3d``.
        rank: Inner width; ``min(out, in * prod(kernel))`` reproduces the layer.
    """
    shape = _shape(module)
    if shape is None:
        raise TypeError(f"cannot factorise {type(module).__name__}")
    weight, bias = module.weight, module.bias
    assert isinstance(weight, torch.Tensor)
    weight = weight.detach()
    out, fan_in = shape
    first_w, second_w = _balanced_factors(weight.reshape(out, fan_in).double(), rank)
    first_w, second_w = first_w.to(weight.dtype), second_w.to(weight.dtype)
    first: nn.Module
    second: nn.Module
    if isinstance(module, nn.Linear):
        first = nn.Linear(module.in_features, rank, bias=False)
        second = nn.Linear(rank, out, bias=bias is not None)
    else:
        conv = type(module)
        assert isinstance(module, _CONVS)
        first = conv(module.in_channels, rank, module.kernel_size, stride=module.stride,
                     padding=module.padding, dilation=module.dilation, bias=False,
                     padding_mode=module.padding_mode)
        second = conv(rank, out, 1, bias=bias is not None)
    first.to(device=weight.device, dtype=weight.dtype)
    second.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        first_weight, second_weight = first.weight, second.weight
        assert isinstance(first_weight, torch.Tensor) and isinstance(second_weight, torch.Tensor)
        first_weight.copy_(first_w.reshape(first_weight.shape))
        second_weight.copy_(second_w.reshape(second_weight.shape))
        if bias is not None:
            second_bias = second.bias
            assert isinstance(second_bias, torch.Tensor)
            assert isinstance(bias, torch.Tensor)
            second_bias.copy_(bias.detach())
    return nn.Sequential(first, second)
