"""The weight-sharing supernet: full size is the teacher, a slice is its materialised twin,
gradients reach exactly the shared entries a student uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from space_nets import ConcatNet, DepthwiseNet, MixerNet, Net1d, SENet, randomised
from tiny_nets import make_tiny_net

from protege.spaces import Supernet, derive
from protege.spaces._lowrank import rank_of

CASES = {
    "tiny-residual-flatten": (make_tiny_net, (4, 1, 8, 8)),
    "concat": (ConcatNet, (4, 1, 8, 8)),
    "squeeze-excitation": (SENet, (4, 1, 8, 8)),
    "layernorm-mlp": (MixerNet, (4, 6, 8)),
    "conv1d-residual": (Net1d, (4, 1, 40)),
    "depthwise-inverted-residual": (DepthwiseNet, (4, 1, 8, 8)),
}


def build(case: str, level: int = 2):
    make, shape = CASES[case]
    teacher = randomised(make())
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return teacher, x, derive(teacher, x[:1], level=level)


def perturb(supernet: Supernet, seed: int = 1) -> None:
    """Move the shared weights (and running statistics) away from the teacher's."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (*supernet.parameters(), *supernet.buffers()):
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
                if tensor.ndim == 1 and (tensor < 0).any():  # running_var must stay positive
                    tensor.abs_()


@pytest.mark.parametrize("case", list(CASES))
def test_full_size_is_the_teacher_and_a_slice_is_its_materialised_twin(case):
    teacher, x, space = build(case)
    supernet = Supernet(space).eval()
    with torch.no_grad():
        expected = teacher(x)
        assert torch.equal(supernet(x), expected)
        assert torch.equal(supernet(x, space.largest()), expected)
    assert all(p.data_ptr() != q.data_ptr()  # a copy: training it leaves the teacher alone
               for p, q in zip(supernet.net.parameters(), teacher.parameters(), strict=True))
    rng = np.random.default_rng(0)
    archs = [supernet.smallest(), *(supernet.sample(rng) for _ in range(3))]
    with torch.no_grad():
        for arch in archs:  # the teacher's weights: the space's own student
            torch.testing.assert_close(supernet(x, arch), space.materialize(arch)(x))
        perturb(supernet)
        for arch in archs:  # trained weights: the student cut from them
            twin = space.with_weights(supernet.net).materialize(arch)
            torch.testing.assert_close(supernet(x, arch), twin(x))
            torch.testing.assert_close(supernet.student(arch)(x), twin(x))


def test_gradients_reach_exactly_the_entries_a_student_keeps():
    _, x, space = build("tiny-residual-flatten")
    supernet = Supernet(space).train()
    arch = supernet.smallest()
    supernet(x, arch).square().sum().backward()
    twin = space.materialize(arch).train()
    twin(x).square().sum().backward()
    shared = dict(supernet.net.named_parameters())
    for name, param in twin.named_parameters():
        grad = shared[name].grad
        assert grad is not None
        assert torch.count_nonzero(grad) <= param.numel()
        torch.testing.assert_close(grad.sum(), param.grad.sum())  # the same values, scattered
    untouched = [name for name, p in shared.items() if name not in dict(twin.named_parameters())]
    assert all(shared[name].grad is None or not shared[name].grad.any() for name in untouched)


def test_dropped_blocks_and_untrained_rank_choices():
    teacher, x, space = build("conv1d-residual", level=3)
    assert any(n.startswith("rank.") for n in space.choices)
    supernet = Supernet(space).eval()  # ranks=False, the default
    assert not any(n.startswith("rank.") for n in supernet.space.choices)  # full rank in training
    depth = [n for n in space.choices if n.startswith("depth.")]
    arch = {**supernet.largest(), depth[0]: False}
    with torch.no_grad():
        twin = space.materialize({**space.largest(), **arch})
        torch.testing.assert_close(supernet(x, arch), twin(x))
        rank = next(n for n in space.choices if n.startswith("rank."))
        low = {**space.largest(), rank: min(space.choices[rank])}
        torch.testing.assert_close(supernet(x, low), supernet(x))  # rank ignored: full rank
        student = supernet.student(low)  # factorised from the shared weights' SVD
        torch.testing.assert_close(student(x), space.materialize(low)(x))


RANKED = [case for case in CASES if case != "depthwise-inverted-residual"]  # no rank choice


@pytest.mark.parametrize("case", RANKED)
def test_a_low_rank_slice_is_its_factorised_twin(case):
    _, x, space = build(case, level=3)
    supernet = Supernet(space, ranks=True).eval()
    assert set(space.ranks) <= set(supernet.space.choices)  # rank choices are trained
    rng = np.random.default_rng(0)
    lowest = {**space.largest(), **{name: min(space.choices[name]) for name in space.ranks}}
    archs = [lowest, supernet.smallest(), *(supernet.sample(rng) for _ in range(4))]
    assert any(arch[name] < 1.0 for arch in archs for name in space.ranks)
    with torch.no_grad():
        for arch in archs:
            torch.testing.assert_close(supernet(x, arch), space.materialize(arch)(x),
                                       rtol=1e-4, atol=1e-5)
        perturb(supernet)
        for arch in archs:
            twin = supernet.student(arch)
            torch.testing.assert_close(supernet(x, arch), twin(x), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(
                twin(x), space.with_weights(supernet.net).materialize(arch)(x))


def test_a_low_rank_student_trains_its_layer_s_top_singular_subspace():
    _, x, space = build("tiny-residual-flatten", level=3)
    x = torch.randn(32, *x.shape[1:], generator=torch.Generator().manual_seed(1))
    supernet = Supernet(space, ranks=True).train()  # 32 samples: full-rank gradients: rank > 5
    name = "rank.fc1"
    arch = {**supernet.largest(), name: min(space.choices[name])}
    supernet(x, arch).square().sum().backward()
    weight = supernet.net.get_submodule(space.ranks[name]).weight
    grad = weight.grad.reshape(weight.shape[0], -1)
    rank = rank_of(space.teacher.get_submodule(space.ranks[name]), arch[name])
    assert rank is not None and rank < min(grad.shape)
    assert grad.abs().sum() > 0
    assert int(torch.linalg.matrix_rank(grad.double(), rtol=1e-4)) <= rank  # r directions
    full = Supernet(space, ranks=True).train()
    full(x, {**arch, name: 1.0}).square().sum().backward()
    other = full.net.get_submodule(space.ranks[name]).weight.grad.reshape(grad.shape)
    assert int(torch.linalg.matrix_rank(other.double(), rtol=1e-4)) > rank  # not projected


def test_a_slice_saves_and_reloads_into_the_space_s_student():
    _, x, space = build("depthwise-inverted-residual")
    supernet = Supernet(space)
    perturb(supernet)
    arch = supernet.sample(np.random.default_rng(3))
    student = supernet.student(arch)
    rebuilt = space.materialize(arch)
    rebuilt.load_state_dict(student.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), student(x))


def test_with_weights_refuses_another_architecture():
    _, _, space = build("concat")
    with pytest.raises(ValueError, match="architecture"):
        space.with_weights(make_tiny_net())
