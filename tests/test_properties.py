"""Property tests (hypothesis): architectures, encodings, the front and its hypervolume."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_nets import make_tiny_net

from protege.search import hypervolume, pareto_indices
from protege.search.export import save_student
from protege.spaces import derive

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def space():
    """The tiny teacher's full space: widths, depth and ranks (level 3)."""
    return derive(make_tiny_net(), X[:1], level=3)


@pytest.fixture(scope="module")
def rederived():
    """The same space derived again from a fresh teacher."""
    return derive(make_tiny_net(), X[:1], level=3)


def archs(space):  # type: ignore[no-untyped-def]
    """Any architecture the space offers: one option per choice (repair may change it)."""
    return st.fixed_dictionaries({name: st.sampled_from(list(options))
                                  for name, options in space.choices.items()})


def test_the_space_has_every_kind_of_choice(space):
    assert {name.split(".")[0] for name in space.choices} == {"width", "depth", "rank"}


@given(data=st.data())
@SETTINGS
def test_architecture_json_round_trips(space, data):
    arch = space.repair(data.draw(archs(space)))
    back = json.loads(json.dumps(arch))
    assert back == arch
    assert space.repair(back) == arch  # the canonical form is a fixed point
    assert all(type(back[name]) is type(arch[name]) for name in arch)  # bools stay bools


@given(data=st.data())
@SETTINGS
def test_encode_is_stable(space, rederived, data):
    arch = space.repair(data.draw(archs(space)))
    shuffled = dict(reversed(list(arch.items())))  # key order does not matter
    first = space.encode(arch)
    assert first.shape == (len(space.choices),)
    assert (space.encode(shuffled) == first).all()
    assert (space.encode(json.loads(json.dumps(arch))) == first).all()
    assert (rederived.encode(arch) == first).all()


@given(data=st.data())
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_random_valid_architecture_always_materialises(space, data, tmp_path_factory):
    arch = data.draw(archs(space))
    student = space.materialize(arch)
    assert student(X).shape == (4, 10)
    again = space.materialize(arch)
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                  again.state_dict().values(), strict=True))
    # Saved and reloaded through arch.json / student.pt, it is the same network.
    from protege.search import load_student

    folder = tmp_path_factory.mktemp("saved")
    save_student(folder, student, space.repair(arch), space)
    loaded = load_student(make_tiny_net(), folder / "arch.json", folder / "student.pt")
    assert torch.allclose(loaded(X), student(X))


def _dominates(a, b):  # type: ignore[no-untyped-def]
    """Brute force, written independently: accuracy up, costs down."""
    no_worse = a[0] >= b[0] and all(x <= y for x, y in zip(a[1:], b[1:], strict=True))
    return no_worse and tuple(a) != tuple(b)


values = st.floats(0.0, 1.0, allow_nan=False).map(lambda v: round(v, 2))
points2 = st.lists(st.tuples(values, values), min_size=0, max_size=9)
points3 = st.lists(st.tuples(values, values, values), min_size=0, max_size=7)


@given(points=st.one_of(points2, points3))
@settings(max_examples=200, deadline=None)
def test_pareto_front_matches_brute_force(points):
    front = pareto_indices(points)
    expected = {tuple(p) for p in points if not any(_dominates(q, p) for q in points)}
    assert {tuple(points[i]) for i in front} == expected
    assert len(front) == len(expected)  # one index per distinct point


def _union_volume(points, reference):  # type: ignore[no-untyped-def]
    """Inclusion-exclusion over every subset of boxes [point, reference] (minimising)."""
    flip = [(-p[0], *p[1:]) for p in points]
    ref = (-reference[0], *reference[1:])
    boxes = [p for p in flip if all(x < r for x, r in zip(p, ref, strict=True))]
    total = 0.0
    for size in range(1, len(boxes) + 1):
        for subset in itertools.combinations(boxes, size):
            corner = [max(c) for c in zip(*subset, strict=True)]
            total += (-1) ** (size + 1) * math.prod(r - c for r, c in zip(ref, corner,
                                                                          strict=True))
    return total


@given(points=st.one_of(points2, points3), low=st.sampled_from([0.0, 0.1]))
@settings(max_examples=200, deadline=None)
def test_hypervolume_matches_brute_force(points, low):
    reference = (low, *([1.0] * (len(points[0]) - 1 if points else 1)))
    expected = _union_volume(points, reference)
    assert hypervolume(points, reference=reference) == pytest.approx(expected, abs=1e-9)
    # Only the front matters.
    front = [points[i] for i in pareto_indices(points)]
    assert hypervolume(front, reference=reference) == pytest.approx(expected, abs=1e-9)
