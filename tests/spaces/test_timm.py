"""timm's tiny ``test_*`` architectures (another code base than torchvision, no weights):
every student derive hands out runs in eval and training mode (issue 18, kind 9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protege.spaces import derive

timm = pytest.importorskip("timm")


def _check(name: str, size: int, samples: int) -> None:
    torch.manual_seed(0)
    teacher = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    space = derive(teacher, x, level=3)
    with torch.no_grad():
        shape = teacher(x).shape
        rng = np.random.default_rng(0)
        for arch in [space.smallest()] + [space.sample(rng) for _ in range(samples)]:
            student = space.materialize(arch)
            assert student(x).shape == shape
            out = student.train()(torch.cat([x, x]))
            assert isinstance(out, torch.Tensor) and out.shape[1:] == shape[1:]


@pytest.mark.parametrize("name", ["test_efficientnet_gn"])
def test_timm_students_run_in_both_modes(name):
    _check(name, 64, samples=3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_convnext", "test_vit", "test_resnet", "test_byobnet",
                                  "test_efficientnet", "test_vit_relpos", "test_nfnet",
                                  "test_coatnet", "test_maxvit"])
def test_timm_students_run_in_both_modes_slow(name):
    _check(name, 160, samples=5)
