"""Tests of the offline benchmark tasks and their cached teachers."""

from __future__ import annotations

import dataclasses
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from protege.experiments import TASKS, Task, _teachers, available_tasks, build_teacher, load_task
from protege.experiments._tasks import FASHION_MNIST_DIR, read_idx

_FASHION_PRESENT = all(
    (FASHION_MNIST_DIR / f).is_file()
    for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")
)


@pytest.fixture(autouse=True)
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every teacher cache under tmp_path, never under ~."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PROTEGE_CACHE_DIR", str(cache))
    return cache


def _labels(ds: torch.utils.data.TensorDataset) -> torch.Tensor:
    return ds.tensors[1]


def _assert_disjoint(*datasets: torch.utils.data.TensorDataset) -> None:
    """No input appears in two splits (rows compared exactly via their bytes)."""
    seen: set[bytes] = set()
    for ds in datasets:
        rows = {row.numpy().tobytes() for row in ds.tensors[0]}
        assert not rows & seen
        seen |= rows


def _assert_same_weights(a: nn.Module, b: nn.Module, *, atol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key, value in sa.items():
        assert torch.allclose(value.float(), sb[key].float(), rtol=0.0, atol=atol), key


def test_available_tasks() -> None:
    assert available_tasks() == list(TASKS) == ["digits", "mnist1d", "fashion_mnist"]


def test_digits_shapes_and_splits(cache_env: Path) -> None:
    task = load_task("digits")
    assert isinstance(task, Task)
    assert task.name == "digits"
    assert task.num_classes == 10
    assert task.input_shape == (1, 8, 8)
    assert task.example_input.shape == (1, 1, 8, 8)
    assert task.cache_dir == cache_env
    total = len(task.train) + len(task.val) + len(task.test)
    assert total == 1797
    assert 340 <= len(task.test) <= 380
    assert 0.1 <= len(task.val) / (len(task.train) + len(task.val)) <= 0.2
    for ds in (task.train, task.val, task.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8)
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert set(_labels(ds).tolist()) == set(range(10))
    _assert_disjoint(task.train, task.val, task.test)
    # the splits are fixed: the seed only seeds the teacher's training
    again = load_task("digits", seed=3)
    assert torch.equal(again.val.tensors[0], task.val.tensors[0])
    assert torch.equal(again.test.tensors[1], task.test.tensors[1])


def test_mnist1d_shapes_without_training(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_teachers, "train_teacher", _forbidden_training)
    task = load_task("mnist1d")
    assert task.num_classes == 10
    assert task.example_input.shape == (1, 1, 40)
    assert len(task.train) + len(task.val) == 4000
    assert len(task.test) == 1000
    assert 0.1 <= len(task.val) / 4000 <= 0.2
    for ds in (task.train, task.val, task.test):
        assert ds.tensors[0].shape[1:] == (1, 40)
        assert ds.tensors[0].dtype == torch.float32
        assert ds.tensors[1].dtype == torch.int64
    _assert_disjoint(task.train, task.val, task.test)


def test_mnist1d_leaves_global_rng_alone() -> None:
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    load_task("mnist1d")
    assert np.random.rand() == expected


def test_unknown_task_names_known_ones() -> None:
    with pytest.raises(ValueError, match="digits.*mnist1d.*fashion_mnist"):
        load_task("cifar10")
    with pytest.raises(ValueError, match="known tasks"):
        build_teacher("cifar10")


@pytest.mark.parametrize("name", TASKS)
def test_build_teacher_runs_on_example_shape(name: str) -> None:
    shapes = {"digits": (2, 1, 8, 8), "mnist1d": (2, 1, 40), "fashion_mnist": (2, 1, 28, 28)}
    model = build_teacher(name)
    assert isinstance(model, nn.Module)
    assert model(torch.randn(*shapes[name])).shape == (2, 10)


def _forbidden_training(*args: object, **kwargs: object) -> None:
    raise AssertionError("the teacher was trained although it should come from the cache")


def test_teacher_trains_once_then_comes_from_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a shorter recipe than the task's 20 epochs: the cache is what is tested (its version
    # hashes the recipe, so these entries are the short recipe's own)
    recipe = dataclasses.replace(_teachers.RECIPES["digits"], epochs=6)
    monkeypatch.setitem(_teachers.RECIPES, "digits", recipe)
    cache = tmp_path / "explicit"
    task = load_task("digits", cache_dir=cache)
    teacher = task.teacher
    info = task.teacher_info
    assert task.teacher is teacher  # same object on every access
    assert not teacher.training
    assert info["from_cache"] is False
    assert info["epochs"] > 0 and info["train_seconds"] > 0
    assert 0.9 <= info["val_accuracy"] <= 1.0
    assert 0.9 <= info["test_accuracy"] <= 1.0
    path = Path(info["cache_path"])
    assert path.is_file() and path.parent == cache / "teachers"
    assert path.name.startswith("digits-seed0-v")
    assert not list(path.parent.glob("*.tmp"))
    assert type(teacher) is type(build_teacher("digits"))

    monkeypatch.setattr(_teachers, "train_teacher", _forbidden_training)
    again = load_task("digits", cache_dir=cache)
    assert again.teacher_info["from_cache"] is True
    assert again.teacher_info["val_accuracy"] == info["val_accuracy"]
    assert not again.teacher.training
    _assert_same_weights(teacher, again.teacher, atol=0.0)
    x = task.val.tensors[0]
    with torch.no_grad():
        assert torch.equal(teacher(x), again.teacher(x))

    # another seed is another cache entry
    with pytest.raises(AssertionError, match="trained although"):
        _ = load_task("digits", seed=1, cache_dir=cache).teacher


@pytest.mark.slow  # keeps the default suite near 5 min; `pytest -m slow` runs it
def test_training_is_deterministic_and_corrupt_cache_is_retrained(
    tmp_path: Path, cache_env: Path
) -> None:
    first = load_task("digits")
    path = first.teacher_cache_path
    assert path.parent.parent == cache_env
    other_cache = tmp_path / "other"
    second = load_task("digits", cache_dir=other_cache)
    corrupt = second.teacher_cache_path
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not a checkpoint")
    assert first.teacher_info["from_cache"] is False
    assert second.teacher_info["from_cache"] is False  # the unreadable file was replaced
    assert load_task("digits", cache_dir=other_cache).teacher_info["from_cache"] is True
    _assert_same_weights(first.teacher, second.teacher, atol=1e-6)


def test_fashion_mnist_missing_dir_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        load_task("fashion_mnist", data_dir=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(err.value)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_roundtrip_and_bad_header(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    with gzip.open(tmp_path / "bad.gz", "wb") as handle:
        handle.write(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad.gz")


def test_fashion_mnist_from_data_dir(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(10, dtype=np.uint8), 10)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (100, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:20])
    task = load_task("fashion_mnist", data_dir=str(tmp_path))
    assert len(task.train) + len(task.val) == 100 and len(task.test) == 20
    assert task.example_input.shape == (1, 1, 28, 28)
    assert task.num_classes == 10
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels"):
        load_task("fashion_mnist", data_dir=tmp_path)


@pytest.mark.skipif(not _FASHION_PRESENT, reason="Debian's dataset-fashion-mnist not installed")
def test_fashion_mnist_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_teachers, "train_teacher", _forbidden_training)
    task = load_task("fashion_mnist")
    assert len(task.train) + len(task.val) == 60000
    assert len(task.test) == 10000
    assert 0.05 <= len(task.val) / 60000 <= 0.2
    assert task.example_input.shape == (1, 1, 28, 28)
    assert task.num_classes == 10
    x = task.train.tensors[0]
    assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1
    assert set(task.val.tensors[1].tolist()) == set(range(10))


def test_teacher_version_changes_with_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    before = _teachers.teacher_version("digits")
    assert before == _teachers.teacher_version("digits")
    recipes = dict(_teachers.RECIPES)
    recipes["digits"] = _teachers.TeacherRecipe(epochs=1, batch_size=8, lr=1e-3)
    monkeypatch.setattr(_teachers, "RECIPES", recipes)
    assert _teachers.teacher_version("digits") != before


def test_cache_dir_defaults_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PROTEGE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_task("digits").cache_dir == tmp_path / ".cache" / "protege"


def test_a_run_file_teacher_of_another_seed_shares_the_data_read_once(monkeypatch, cache_env):
    from protege.experiments import _tasks

    reads: list[int] = []
    read = _tasks._digits_arrays
    monkeypatch.setattr(_tasks, "_digits_arrays", lambda: reads.append(1) or read())
    _tasks._loaded.cache_clear()
    data = _tasks._loaded("digits", 0, cache_env)  # what benchmark_data(task=...) reads
    seeded = _tasks._loaded("digits", 3, cache_env)  # what benchmark_teacher(seed=3) builds on
    assert len(reads) == 1
    assert seeded.seed == 3 and seeded.train is data.train and seeded.test is data.test
    _tasks._loaded.cache_clear()
