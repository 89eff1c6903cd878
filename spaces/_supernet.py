"""The teacher as a weight-sharing supernet of its derived space.

Every student of a space is a slice of the teacher: the most important channels of
each coupled group, the kept residual blocks, the top singular directions of a
factorised layer. :class:`Supernet` keeps one set of the teacher's weights and runs any
student as a slice of them, so that training students trains the shared weights
(Once-for-All, Cai et al., ICLR 2020; BigNAS, Yu et al., ECCV 2020; slimmable networks,
Yu et al., ICLR 2019).

No per-architecture code: which entries of the teacher's tensors a student keeps is
read off :meth:`SearchSpace.materialize` itself. A copy of the teacher whose every
floating tensor holds its own flat positions (``0, 1, 2, ...`` in float64, exact to
2**53) is materialised as the student; the values the student's tensors end up with
are the positions they were cut from. A student's forward pass is then the student's
module called on gathered views of the shared tensors
(:func:`torch.func.functional_call`): its gradients flow back into the shared weights
at exactly the entries it used, and in eval mode it computes what
``space.with_weights(supernet.net).materialize(arch)`` computes.

A rank choice (level 3) cannot be a slice: ``materialize`` builds a factorised layer's
two factors from the SVD of its (cut) weight. The supernet runs such a student with the
shared weight projected on its top singular vectors (:func:`truncate`), which is the
product of the two factors; the projection is linear in the shared weight, so training
the student trains the shared weight's top singular subspace.
"""

from __future__ import annotations

import collections
import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from protege.spaces._checks import clone
from protege.spaces._lowrank import rank_of, truncate
from protege.spaces._space import Architecture, SearchSpace

__all__ = ["NotASlice", "Supernet"]

logger = logging.getLogger(__name__)

_CACHED_STUDENTS = 32
"""Students whose gather maps are kept (the largest and smallest are asked every step)."""


class NotASlice(ValueError):
    """A student's tensor is not a slice of the teacher's (a choice builds new weights)."""


class Supernet(nn.Module):
    """The students of ``space`` as slices of one set of the teacher's weights.

    ``net`` is a copy of the teacher: the shared weights, and the largest student.
    ``supernet(x, arch)`` runs student ``arch`` on the shared weights; a training step
    on it updates the entries of the shared tensors that the student keeps. Width
    (coupled channel groups, most important channels first) and depth (residual blocks
    left out) are slices of the shared weights. With ``ranks``, a rank choice
    (``rank.*``, level 3) below 1.0 runs the layer's cut shared weight projected on its
    top singular vectors (the rank ``materialize`` gives that layer), so the gradient
    trains that subspace; without, every student runs at full rank. Either way
    :meth:`student` factorises the layer from the SVD of the trained shared weights, as
    ``materialize`` does from the teacher's.

    Args:
        space: The space (from :func:`protege.spaces.derive`); its teacher is copied,
            not modified.
        ranks: Train the rank choices. False (the default, the better of the two on
            MNIST-1D, ``experiments/results/compare_mnist1d_oneshot_ranks.md``): the
            supernet samples and runs every student at full rank (its :attr:`space` has
            no rank choices), and a factorised student's factors are cut from weights
            trained at full rank.

    Raises:
        NotASlice: If a student of the space is not a slice of the teacher (checked on
            the smallest student here, and on every student as it is first run).
    """

    def __init__(self, space: SearchSpace, *, ranks: bool = False) -> None:
        super().__init__()
        self.full_space = space
        sliced = space.without(list(space.ranks))
        self.space = space if ranks else sliced
        """The choices the supernet trains: ``full_space``, without its rank choices when
        ``ranks`` is False."""
        self.net = clone(space.teacher).eval()
        self._ranks = {name: layer for name, layer in space.ranks.items() if ranks}
        self._positions = sliced.with_weights(_positions(self.net))
        self._largest = self.space.repair(self.space.largest())
        self._students: collections.OrderedDict[
            str, tuple[nn.Module, dict[str, Any], dict[str, tuple[str, nn.Module]]]] = (
            collections.OrderedDict())
        self._gather(self._sliced(self.space.smallest()))  # fail now, not in the first step

    # -- the students ------------------------------------------------------------------------

    def largest(self) -> Architecture:
        """The teacher's own architecture among the trained choices."""
        return dict(self._largest)

    def smallest(self) -> Architecture:
        """The smallest student among the trained choices."""
        return self.space.smallest()

    def sample(self, rng: np.random.Generator) -> Architecture:
        """A uniformly random student among the trained choices."""
        return self.space.repair(self.space.sample(rng))

    def forward(self, x: torch.Tensor, arch: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Student ``arch`` (the largest when None) on ``x``, with the shared weights.

        ``arch`` names the trained choices (:attr:`space`); other choices, when given,
        are ignored (without ``ranks``, the supernet runs full rank). In eval mode the
        output equals that of :meth:`student` (up to float rounding where a layer is
        factorised); in training mode BatchNorm uses the batch's statistics and the
        running statistics of a sliced student are not kept (recalibrate a student before
        scoring it).
        """
        if arch is None:
            return self.net(x)
        arch = self.space.repair({name: arch[name] for name in self.space.choices})
        if arch == self._largest:
            return self.net(x)
        module, index, layers = self._gather(self._sliced(arch))
        module.train(self.training)
        shared = self._shared()
        tensors = {name: shared[name].reshape(-1)[positions].view(shape)
                   for name, (positions, shape) in index.items()}
        for name, (weight, layer) in layers.items():
            rank = rank_of(layer, float(arch[name]))
            if rank is not None:
                tensors[weight] = truncate(tensors[weight], rank)
        return torch.func.functional_call(module, tensors, (x,), strict=False)

    def student(self, arch: Mapping[str, Any]) -> nn.Module:
        """Student ``arch`` as a stand-alone module with the shared weights (copied), as
        ``full_space.materialize`` builds it: any rank choice below 1.0 is factorised from
        the SVD of the shared weights; a rank choice left out is taken at full rank.
        Eval mode; the supernet is not touched."""
        return self.full_space.with_weights(self.net).materialize(
            {**self.full_space.largest(), **dict(arch)})

    def _sliced(self, arch: Mapping[str, Any]) -> Architecture:
        """The choices of ``arch`` that cut the shared tensors (width, depth)."""
        return {name: arch[name] for name in self._positions.choices}

    def _shared(self) -> dict[str, torch.Tensor]:
        """The shared tensors by name: the teacher copy's parameters and buffers."""
        return {**dict(self.net.named_parameters()), **dict(self.net.named_buffers())}

    def _gather(self, arch: Architecture) -> tuple[nn.Module, dict[str, Any],
                                                     dict[str, tuple[str, nn.Module]]]:
        """The student's module (its own tensors unused); per tensor name, its flat
        positions in the shared tensor of that name and its shape; per rank choice whose
        layer the student has, the name of the layer's weight and the (cut) layer. Cached
        per architecture of the sliced choices (moving the supernet clears the cache: the
        positions live on its device)."""
        key = json.dumps(arch, sort_keys=True)
        if key in self._students:
            self._students.move_to_end(key)
            return self._students[key]
        cut = self._positions.materialize(arch)
        shared = self._shared()
        device = next(self.net.parameters(), torch.empty(0)).device
        index: dict[str, Any] = {}
        for name, tensor in (*cut.named_parameters(), *cut.named_buffers()):
            if not tensor.is_floating_point():
                continue
            source = shared.get(name)
            positions = tensor.detach().reshape(-1)
            whole = positions.round()
            if (source is None or not torch.equal(positions, whole) or len(whole) == 0
                    or int(whole.min()) < 0 or int(whole.max()) >= source.numel()
                    or len(torch.unique(whole)) != len(whole)):
                raise NotASlice(f"{name} of student {arch} is not a slice of the teacher's "
                                "tensor of that name: its space builds weights a supernet "
                                "cannot share")
            index[name] = (whole.long().to(device), tuple(tensor.shape))
        dtype = next(self.net.parameters(), torch.empty(0)).dtype
        module = cut.to(device=device, dtype=dtype)
        weights = {id(tensor): name for name, tensor in module.named_parameters()}
        kept = dict(module.named_modules(remove_duplicate=False))  # not a dropped block's
        layers = {name: (weights[id(kept[layer].weight)], kept[layer])
                  for name, layer in self._ranks.items() if layer in kept}
        self._students[key] = (module, index, layers)
        if len(self._students) > _CACHED_STUDENTS:
            self._students.popitem(last=False)
        return module, index, layers

    def _apply(self, fn: Any, recurse: bool = True) -> Supernet:  # noqa: ANN401 (torch's)
        """Moving the supernet (``.to``, ``.cuda``) drops the cached gather maps: they are
        rebuilt on the new device when next needed."""
        self._students.clear()
        return super()._apply(fn, recurse)


def _positions(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` whose every floating tensor holds its flat positions."""
    encoded = clone(model).double()
    with torch.no_grad():
        for tensor in (*encoded.parameters(), *encoded.buffers()):
            if tensor.is_floating_point():
                tensor.copy_(torch.arange(tensor.numel(), dtype=torch.float64)
                             .view(tensor.shape))
    return encoded
