"""The teacher as a weight-sharing supernet of its derived space.

Every student of a space is a slice of the teacher: the most important channels of
each coupled group, the kept residual blocks. :class:`Supernet` keeps one set of the
teacher's weights and runs any student as a slice of them, so that training students
trains the shared weights (Once-for-All, Cai et al., ICLR 2020; BigNAS, Yu et al.,
ECCV 2020; slimmable networks, Yu et al., ICLR 2019).

No per-architecture code: which entries of the teacher's tensors a student keeps is
read off :meth:`SearchSpace.materialize` itself. A copy of the teacher whose every
floating tensor holds its own flat positions (``0, 1, 2, ...`` in float64, exact to
2**53) is materialised as the student; the values the student's tensors end up with
are the positions they were cut from. A student's forward pass is then the student's
module called on gathered views of the shared tensors
(:func:`torch.func.functional_call`): its gradients flow back into the shared weights
at exactly the entries it used, and in eval mode it computes what
``space.with_weights(supernet.net).materialize(arch)`` computes.
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
    left out) are shared; rank choices (``rank.*``, level 3) are not trained as shared
    factors: the supernet samples and runs every student at full rank, and
    :meth:`student` factorises a chosen student's layers from the SVD of the trained
    shared weights (as ``materialize`` does from the teacher's).

    Args:
        space: The space (from :func:`protege.spaces.derive`); its teacher is copied,
            not modified.

    Raises:
        NotASlice: If a student of the space is not a slice of the teacher (checked on
            the smallest student here, and on every student as it is first run).
    """

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        self.full_space = space
        self.space = space.without([name for name in space.choices if name.startswith("rank.")])
        """The choices the supernet trains: ``full_space`` without its rank choices."""
        self.net = clone(space.teacher).eval()
        self._positions = self.space.with_weights(_positions(self.net))
        self._largest = self.space.repair(self.space.largest())
        self._students: collections.OrderedDict[str, tuple[nn.Module, dict[str, Any]]] = (
            collections.OrderedDict())
        self._gather(self.space.smallest())  # fail now, not in the first training step

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

        ``arch`` names the trained choices (:attr:`space`); rank choices, when given,
        are ignored (the supernet runs full rank). In eval mode the output equals that of
        :meth:`student` without its rank choices; in training mode BatchNorm uses the
        batch's statistics and the running statistics of a sliced student are not kept
        (recalibrate a student before scoring it).
        """
        if arch is None:
            return self.net(x)
        arch = self.space.repair({name: arch[name] for name in self.space.choices})
        if arch == self._largest:
            return self.net(x)
        module, index = self._gather(arch)
        module.train(self.training)
        shared = self._shared()
        tensors = {name: shared[name].reshape(-1)[positions].view(shape)
                   for name, (positions, shape) in index.items()}
        return torch.func.functional_call(module, tensors, (x,), strict=False)

    def student(self, arch: Mapping[str, Any]) -> nn.Module:
        """Student ``arch`` as a stand-alone module with the shared weights (copied), as
        ``full_space.materialize`` builds it: any rank choice below 1.0 is factorised from
        the SVD of the shared weights; a rank choice left out is taken at full rank.
        Eval mode; the supernet is not touched."""
        return self.full_space.with_weights(self.net).materialize(
            {**self.full_space.largest(), **dict(arch)})

    def _shared(self) -> dict[str, torch.Tensor]:
        """The shared tensors by name: the teacher copy's parameters and buffers."""
        return {**dict(self.net.named_parameters()), **dict(self.net.named_buffers())}

    def _gather(self, arch: Architecture) -> tuple[nn.Module, dict[str, Any]]:
        """The student's module (its own tensors unused) and, per tensor name, its flat
        positions in the shared tensor of that name and its shape. Cached per architecture
        (moving the supernet clears the cache: the positions live on its device)."""
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
        self._students[key] = (module, index)
        if len(self._students) > _CACHED_STUDENTS:
            self._students.popitem(last=False)
        return module, index

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
