"""Teachers and data named in a YAML file: import paths, weights, image folders, tables.

A run file's ``teacher:`` section names a class or factory by import path
(LightningCLI's ``class_path`` / ``init_args``), a weights file and the shape and dtype
of one input; its ``data:`` section names exactly one source:

- ``image_folder``: ``train/``, ``val/`` and optionally ``test/`` folders of class
  folders, read by torchvision's ``ImageFolder`` with resize / normalise transforms;
- ``table``: a CSV or Parquet file read by pandas (a label column, feature columns);
- ``class_path``: a class or factory returning ``(train, val[, test])`` datasets or
  loaders, or a ``LightningDataModule``.

Every source is read into ``TensorDataset(inputs, labels)`` splits here, so each
mistake (a name that does not import, weights that do not fit, a source that yields
something else than (input, label) pairs, a missing folder or column, a class count
the teacher does not have) is one :class:`SourceError` line before anything is run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from protege.common import describe_value, join_few
from protege.distill import as_tensors
from protege.search import ConfigError

__all__ = [
    "DataSource",
    "ImageFolderSource",
    "ImportSource",
    "SourceError",
    "Splits",
    "TableSource",
    "TeacherSource",
    "import_object",
    "parse_data",
    "parse_teacher",
]

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
    "bfloat16": torch.bfloat16, "int64": torch.int64, "int32": torch.int32,
    "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool,
}
"""``teacher.input_dtype`` names and the torch dtypes they mean."""

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")


class SourceError(ConfigError):
    """The teacher or the data named by a run file cannot be built; the message says why."""


# --------------------------------------------------------------------------- import paths


@contextlib.contextmanager
def _importable(root: Path | None) -> Iterator[None]:
    """Let ``import`` find modules next to the config file while building from it."""
    if root is None or str(root) in sys.path:
        yield
        return
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(root))


def import_object(path: str, *, key: str, root: Path | None = None) -> Any:
    """The object an import path names: ``"module.Name"`` or ``"module:name"``.

    Args:
        path: The import path; after ``:`` comes a (dotted) attribute of the module.
        key: The config key that holds ``path``, for the error message.
        root: A folder searched first (the config file's folder).

    Raises:
        SourceError: Naming the module that does not import, or the missing name.
    """
    if not isinstance(path, str) or not path.strip():
        raise SourceError(f"{key}: expected an import path 'module.Name' or 'module:name', "
                          f"got {path!r}")
    if ":" in path:
        module_name, _, attribute = path.partition(":")
    else:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise SourceError(f"{key}: {path!r} names no module: write 'module.Name' or "
                          "'module:name' (e.g. torchvision.models.resnet18)")
    with _importable(root):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            where = f" (searched {root} and sys.path)" if root is not None else ""
            raise SourceError(f"{key}: cannot import module {module_name!r} of {path!r}: "
                              f"{_one_line(exc)}{where}") from exc
        except Exception as exc:  # the user's module raised while it was imported
            raise SourceError(f"{key}: importing module {module_name!r} failed: "
                              f"{type(exc).__name__}: {_one_line(exc)}") from exc
    found: Any = module
    for part in attribute.split("."):
        if not hasattr(found, part):
            names = sorted(n for n in dir(module) if not n.startswith("_"))[:12]
            raise SourceError(f"{key}: module {module_name!r} has no name {attribute!r} "
                              f"(it has: {', '.join(names)}{', ...' if len(names) == 12 else ''})")
        found = getattr(found, part)
    if not callable(found):
        raise SourceError(f"{key}: {path!r} is a {type(found).__name__}, not a class or "
                          "function")
    return found


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _call(factory: Any, init_args: Mapping[str, Any], *, key: str, path: str,
          root: Path | None) -> Any:
    try:
        inspect.signature(factory).bind(**init_args)
    except TypeError as exc:
        raise SourceError(f"{key}.init_args do not fit {path}: {_one_line(exc)}") from exc
    except ValueError:  # no signature to check (a builtin): let the call say it
        pass
    with _importable(root):
        try:
            return factory(**init_args)
        except Exception as exc:
            raise SourceError(f"{key}: {path}(**init_args) failed: {type(exc).__name__}: "
                              f"{_one_line(exc)}") from exc


# --------------------------------------------------------------------------- sections


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SourceError(f"{key}: expected a mapping, got {value!r}")
    return dict(value)


def _known(data: Mapping[str, Any], allowed: Sequence[str], key: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SourceError(f"unknown key '{key}.{unknown[0]}'; known keys under {key}: "
                          f"{', '.join(sorted(allowed))}")


def _path(value: Any, key: str, root: Path) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise SourceError(f"{key}: expected a path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def _root(data: Mapping[str, Any], key: str, default: Path) -> Path:
    """A recorded section's own ``root`` (absolute), else ``default``."""
    value = data.get("root")
    if value is None:
        return default
    root = Path(str(value))
    if not root.is_absolute():
        raise SourceError(f"{key}.root: expected an absolute folder, got {value!r}")
    return root


def _fraction(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise SourceError(f"{key}: must be a fraction in (0, 1), got {value!r}")
    return float(value)


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceError(f"{key}: expected an integer, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Section:
    """A section of a run file, resolved."""

    def to_dict(self) -> dict[str, Any]:
        """The resolved section, as a run folder records it: every key, absolute paths as
        text, its own keys before ``val_fraction``, ``split_seed`` and ``root``."""
        fields = sorted(dataclasses.fields(self), key=lambda field: field.name in _COMMON_KEYS)
        return {field.name: _recorded(getattr(self, field.name)) for field in fields}


def _recorded(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return dict(value) if isinstance(value, Mapping) else value


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherSource(_Section):
    """How to build the teacher.

    Attributes:
        class_path: Class or factory returning the ``nn.Module``.
        init_args: Its keyword arguments.
        weights: A state dict or a checkpoint holding one under ``state_dict`` (a
            Lightning ``.ckpt``), loaded with ``weights_only=True``; None keeps the
            weights the factory gives (a benchmark teacher loads its own).
        input_shape: One sample's shape; None takes it from the first training input.
        input_dtype: The inputs' dtype name; None takes it from the data.
        root: Folder searched first by imports (the config file's folder).
    """

    class_path: str
    init_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    weights: Path | None = None
    input_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None
    root: Path | None = None

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES[self.input_dtype] if self.input_dtype is not None else None

    def build(self) -> nn.Module:
        """The teacher with its weights, in eval mode.

        Raises:
            SourceError: If the path does not import, the call fails, it is no module,
                or the weights do not fit (naming missing, unexpected and misshapen keys).
        """
        factory = import_object(self.class_path, key="teacher.class_path", root=self.root)
        model = _call(factory, self.init_args, key="teacher", path=self.class_path,
                      root=self.root)
        if not isinstance(model, nn.Module):
            raise SourceError(f"teacher.class_path: {self.class_path} returned a "
                              f"{type(model).__name__}, not a torch.nn.Module")
        if self.weights is not None:
            load_weights(model, self.weights, name=self.class_path)
        return model.eval()


def parse_teacher(section: Any, *, root: Path) -> TeacherSource:
    """Read the ``teacher:`` section; relative paths are relative to ``root``.

    A run folder records the section resolved: absolute paths, and ``root`` (the
    folder of the config file it came from, searched first by imports).

    Raises:
        SourceError: Naming the key that is missing, unknown or wrong.
    """
    data = _mapping(section, "teacher")
    _known(data, ("class_path", "init_args", "weights", "input_shape", "input_dtype", "root"),
           "teacher")
    root = _root(data, "teacher", root)
    if "class_path" not in data:
        raise SourceError("teacher.class_path: missing; name the model's class or factory, "
                          "e.g. class_path: torchvision.models.resnet18")
    shape = data.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or not shape
                              or not all(isinstance(s, int) and s > 0 for s in shape)):
        raise SourceError(f"teacher.input_shape: expected the shape of one sample as a list "
                          f"of positive integers, e.g. [3, 32, 32], got {shape!r}")
    dtype = data.get("input_dtype")
    if dtype is not None and dtype not in DTYPES:
        raise SourceError(f"teacher.input_dtype: unknown dtype {dtype!r}; known: "
                          f"{', '.join(DTYPES)}")
    weights = data.get("weights")
    return TeacherSource(
        class_path=str(data["class_path"]),
        init_args=_mapping(data.get("init_args"), "teacher.init_args"),
        weights=_path(weights, "teacher.weights", root) if weights is not None else None,
        input_shape=tuple(shape) if shape else None, input_dtype=dtype, root=root)


def load_weights(model: nn.Module, path: Path, *, name: str) -> None:
    """Load a state dict (or a checkpoint's ``state_dict``) into ``model``, strictly.

    A prefix every key of the file shares and the model lacks (``model.`` of a
    LightningModule attribute, ``module.`` of DataParallel) is dropped.

    Raises:
        SourceError: If the file is missing or unsafe to load, or its keys or shapes
            differ from the model's (each list named).
    """
    if not path.is_file():
        raise SourceError(f"teacher.weights: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling fails in many types (UnpicklingError, EOF, ...)
        raise SourceError(f"teacher.weights: {path} cannot be loaded with weights_only=True "
                          f"({_one_line(exc).split('. ')[0]}); save model.state_dict() with "
                          "torch.save") from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]  # a Lightning (or similar) checkpoint
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise SourceError(f"teacher.weights: {path} holds a {type(state).__name__}, not a "
                          "state dict of tensors; save model.state_dict() with torch.save")
    expected = model.state_dict()
    state = _strip_prefix(dict(state), set(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {join_few(keys)}" for label, keys in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("shapes differ:", shapes)) if keys]
        raise SourceError(f"teacher.weights: {path.name} does not fit {name}: "
                          f"{'; '.join(parts)} (check teacher.init_args)")
    model.load_state_dict(state)


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    if set(state) == expected or not state:
        return state
    first = next(iter(state)).split(".")[0] + "."
    if all(key.startswith(first) for key in state):
        stripped = {key[len(first):]: value for key, value in state.items()}
        if set(stripped) & expected:
            return stripped
    return state


# --------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True, kw_only=True)
class Splits:
    """Training, validation and (optional) test data as ``TensorDataset(inputs, labels)``.

    Attributes:
        train: What students learn from.
        val: What every trial and the accuracy limit are measured on.
        test: Held out; reports the pick's final accuracy only.
        classes: Number of classes the source declares (class folders), else None.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset | None
    classes: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Common(_Section):
    """What every ``data:`` source has: how validation is carved, where imports look first."""

    val_fraction: float = 0.1
    split_seed: int = 0
    root: Path | None = None

    def finish(self, train: Any, val: Any, test: Any, *, dtype: torch.dtype | None,
               classes: int | None = None) -> Splits:
        train_data = _tensors_of(train, "training data", dtype=dtype)
        if val is None:
            train_data, val_data = carve(train_data, self.val_fraction, seed=self.split_seed)
            logger.info("validation: %d of %d training samples (val_fraction %s, seed %d)",
                        len(val_data), len(train_data) + len(val_data), self.val_fraction,
                        self.split_seed)
        else:
            val_data = _tensors_of(val, "validation data", dtype=dtype)
        test_data = _tensors_of(test, "test data", dtype=dtype) if test is not None else None
        return Splits(train=train_data, val=val_data, test=test_data, classes=classes)


_COMMON_KEYS = ("val_fraction", "split_seed", "root")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageFolderSource(_Common):
    """``train/``, ``val/`` and ``test/`` folders of class folders (torchvision ImageFolder).

    Attributes:
        image_folder: The folder holding ``train/`` (and ``val/``, ``test/``).
        image_size: Resize to this size (an int: square; or [height, width]).
        mean: Per-channel means subtracted after ``ToTensor`` (None: no normalising).
        std: Per-channel standard deviations divided by after the mean.
        grayscale: Read one channel instead of RGB.
    """

    image_folder: Path
    image_size: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    grayscale: bool = False

    def load(self, *, dtype: torch.dtype | None = None) -> Splits:
        try:
            from torchvision import datasets, transforms
        except ImportError as exc:
            raise ImportError("data.image_folder needs torchvision: pip install "
                              "'protege[data]'") from exc

        steps: list[Any] = []
        if self.grayscale:
            steps.append(transforms.Grayscale(1))
        if self.image_size is not None:
            steps.append(transforms.Resize(self.image_size))
        steps.append(transforms.ToTensor())
        if self.mean is not None:
            steps.append(transforms.Normalize(self.mean, self.std or (1.0,) * len(self.mean)))
        transform = transforms.Compose(steps)
        train_dir = self.image_folder / "train"
        if not train_dir.is_dir():
            raise SourceError(f"data.image_folder: {train_dir} not found: the image folder "
                              "needs train/ (and val/, optionally test/) folders of class folders")
        folders: dict[str, Any] = {}
        for split in ("train", "val", "test"):
            path = self.image_folder / split
            if path.is_dir():
                try:
                    folders[split] = datasets.ImageFolder(str(path), transform=transform)
                except (FileNotFoundError, RuntimeError) as exc:
                    raise SourceError(f"data.image_folder: {path}: {_one_line(exc)}") from exc
        classes = folders["train"].classes
        for split, folder in folders.items():
            if folder.classes != classes:
                raise SourceError(f"data.image_folder: {self.image_folder / split} has classes "
                                  f"{join_few(folder.classes)} but train/ has "
                                  f"{join_few(classes)}; every split needs the same class folders")
        return self.finish(folders["train"], folders.get("val"), folders.get("test"),
                           dtype=dtype, classes=len(classes))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TableSource(_Common):
    """A CSV or Parquet table read by pandas: one row per sample.

    Attributes:
        table: The training table (``.csv``, ``.tsv``, ``.parquet``).
        label: The label column (integers 0..C-1, or names mapped to their sorted order).
        features: Feature columns; None takes every column but the label.
        val_table: Validation rows; None carves them from ``table``.
        test_table: Test rows, optional.
    """

    table: Path
    label: str
    features: tuple[str, ...] | None = None
    val_table: Path | None = None
    test_table: Path | None = None

    def load(self, *, dtype: torch.dtype | None = None) -> Splits:
        frames = {"table": _read_table(self.table, "data.table")}
        for key in ("val_table", "test_table"):
            path = getattr(self, key)
            if path is not None:
                frames[key] = _read_table(path, f"data.{key}")
        names = None
        from pandas.api.types import is_float_dtype, is_integer_dtype

        labels = frames["table"].get(self.label)
        whole = labels is not None and is_float_dtype(labels.dtype) and bool(
            labels.notna().all() and (labels == labels.round()).all())  # 0.0, 1.0, ... as read
        if labels is not None and not is_integer_dtype(labels.dtype) and not whole:
            names = sorted({str(v) for frame in frames.values() if self.label in frame
                            for v in frame[self.label]})
        tables = {key: self._tensors(frame, key, names) for key, frame in frames.items()}
        return self.finish(tables["table"], tables.get("val_table"), tables.get("test_table"),
                           dtype=dtype, classes=len(names) if names else None)

    def _tensors(self, frame: Any, key: str, names: list[str] | None) -> TensorDataset:
        path = getattr(self, key)
        columns = [str(c) for c in frame.columns]
        if self.label not in frame.columns:
            raise SourceError(f"data.label: column {self.label!r} is not in {path.name} "
                              f"(columns: {join_few(columns, 12)})")
        features = list(self.features) if self.features else \
            [c for c in frame.columns if c != self.label]
        absent = [c for c in features if c not in frame.columns]
        if absent:
            raise SourceError(f"data.features: column {absent[0]!r} is not in {path.name} "
                              f"(columns: {join_few(columns, 12)})")
        values = frame[features]
        numeric = values.select_dtypes(include=["number", "bool"]).columns
        text = [str(c) for c in features if c not in numeric]
        if text:
            raise SourceError(f"data.features: column {text[0]!r} of {path.name} is not "
                              "numeric; encode it, or leave it out of data.features")
        # one dtype for all columns (pandas gives object arrays for bools beside numbers);
        # teacher.input_dtype is applied, and checked, with the other sources' in finish()
        kinds = {values[c].dtype.kind for c in features}
        common = bool if kinds == {"b"} else np.float64 if kinds & {"f", "c"} else np.int64
        inputs = torch.from_numpy(np.ascontiguousarray(values.to_numpy(dtype=common)))
        column = frame[self.label]
        if names is not None:
            index = {name: i for i, name in enumerate(names)}
            labels = torch.tensor([index[str(v)] for v in column], dtype=torch.long)
        else:
            labels = torch.from_numpy(column.to_numpy().astype(np.int64))
        return TensorDataset(inputs, labels)


def _read_table(path: Path, key: str) -> Any:
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("data.table needs pandas (and pyarrow for Parquet): pip install "
                          "'protege[data]'") from exc

    if not path.is_file():
        raise SourceError(f"{key}: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise SourceError(f"{key}: {path.name} is not a table protege reads (by suffix: "
                          f"{', '.join(TABLE_SUFFIXES)})")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except ImportError as exc:
        raise ImportError(f"{key}: reading Parquet needs pyarrow: pip install pyarrow") from exc
    except Exception as exc:  # pandas' parser errors have no common base class
        raise SourceError(f"{key}: cannot read {path}: {type(exc).__name__}: "
                          f"{_one_line(exc)}") from exc


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImportSource(_Common):
    """Data from the user's own code: a class or factory by import path.

    It returns ``(train, val[, test])`` datasets or loaders (``val`` may be None), one
    training dataset, a mapping with those keys, or a ``LightningDataModule``.

    Attributes:
        class_path: ``"module.Name"`` or ``"module:name"``.
        init_args: Its keyword arguments.
    """

    class_path: str
    init_args: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def load(self, *, dtype: torch.dtype | None = None) -> Splits:
        factory = import_object(self.class_path, key="data.class_path", root=self.root)
        made = _call(factory, self.init_args, key="data", path=self.class_path, root=self.root)
        with _importable(self.root):  # reading the data may import the user's modules too
            train, val, test = _unpack(made, self.class_path)
            return self.finish(train, val, test, dtype=dtype)


def _is_datamodule(made: Any) -> bool:
    return all(callable(getattr(made, name, None))
               for name in ("setup", "train_dataloader", "val_dataloader"))


def _unpack(made: Any, path: str) -> tuple[Any, Any, Any]:
    """``(train, val, test)`` of what a data factory returned."""
    if _is_datamodule(made):
        return _from_datamodule(made, path)
    if isinstance(made, Mapping):
        unknown = sorted(set(made) - {"train", "val", "test"})
        if "train" not in made or unknown:
            raise SourceError(f"data.class_path: {path} returned a mapping with keys "
                              f"{join_few(sorted(map(str, made)))}; expected train, val, test")
        return made["train"], made.get("val"), made.get("test")
    if isinstance(made, (Dataset, DataLoader)):
        return made, None, None
    if isinstance(made, (tuple, list)) and 1 <= len(made) <= 3 and all(
            part is None or isinstance(part, (Dataset, DataLoader)) for part in made):
        parts = [*made, None, None]
        if parts[0] is None:
            raise SourceError(f"data.class_path: {path} returned no training data")
        return parts[0], parts[1], parts[2]
    raise SourceError(f"data.class_path: {path} returned {describe_value(made)}; expected "
                      "(train, val[, test]) datasets or loaders, or a LightningDataModule")


def _overrides(obj: Any, name: str) -> bool:
    """Whether ``obj``'s class defines ``name`` itself, not only Lightning's base hooks."""
    for cls in type(obj).__mro__:
        if name in vars(cls):
            return not cls.__module__.startswith(("pytorch_lightning.", "lightning."))
    return False


def _from_datamodule(module: Any, path: str) -> tuple[Any, Any, Any]:
    """Lightning's order: ``prepare_data``, ``setup("fit")``, loaders, ``setup("test")``."""
    def step(name: str, *args: Any) -> Any:
        try:
            return getattr(module, name)(*args)
        except Exception as exc:
            raise SourceError(f"data.class_path: {path}.{name}"
                              f"({', '.join(map(repr, args))}) failed: {type(exc).__name__}: "
                              f"{_one_line(exc)}") from exc

    if callable(getattr(module, "prepare_data", None)):
        step("prepare_data")
    step("setup", "fit")
    train, val = step("train_dataloader"), step("val_dataloader")
    test = None
    if _overrides(module, "test_dataloader"):
        step("setup", "test")
        test = step("test_dataloader")
    if isinstance(val, (list, tuple)):  # Lightning allows several validation loaders
        val = val[0] if val else None
    return train, val, test


def _tensors_of(data: Any, what: str, *, dtype: torch.dtype | None = None) -> TensorDataset:
    """Every ``(input, label)`` of a dataset or loader (:func:`protege.distill.as_tensors`),
    as a ``TensorDataset`` of ``teacher.input_dtype`` inputs.

    Integer inputs (token ids) stay integers unless ``dtype`` says otherwise; floating and
    boolean inputs become ``dtype`` (float32 by default).

    Raises:
        SourceError: If it is no dataset or loader, is empty, yields anything but
            (input, label) pairs (saying what it yielded), its labels are not class
            indices, or its inputs are floats where ``dtype`` is an integer type or back.
    """
    if not isinstance(data, (Dataset, DataLoader)):
        raise SourceError(f"the {what} is {describe_value(data)}, not a Dataset or DataLoader")
    try:
        inputs, labels = as_tensors(data, what=what)
    except ValueError as exc:
        raise SourceError(str(exc)) from exc
    if labels.dim() != 1:
        raise SourceError(f"the {what} has labels of shape {tuple(labels.shape)}; labels must "
                          "be class indices 0..C-1, one per sample")
    if dtype is not None:
        if inputs.is_floating_point() != dtype.is_floating_point and inputs.dtype != torch.bool:
            raise SourceError(f"the {what} has {str(inputs.dtype).removeprefix('torch.')} "
                              f"inputs but teacher.input_dtype is "
                              f"{str(dtype).removeprefix('torch.')}")
        inputs = inputs.to(dtype)
    elif inputs.dtype == torch.bool:
        inputs = inputs.float()
    return TensorDataset(inputs, labels)


def carve(train: TensorDataset, fraction: float, *, seed: int,
          ) -> tuple[TensorDataset, TensorDataset]:
    """Split ``train`` into (kept, validation) with a fixed seed, stratified when it can be."""
    labels = train.tensors[1].numpy()
    count = len(labels)
    held = max(1, round(fraction * count))
    if count - held < 2:
        raise SourceError(f"the training data has {count} samples: too few to carve a "
                          "validation split from; give val data")
    counts = np.unique(labels, return_counts=True)[1]  # labels out of range: build_inputs says so
    stratify = labels if counts.min() >= 2 and held >= len(counts) else None
    kept, val = train_test_split(np.arange(count), test_size=held, random_state=seed,
                                 stratify=stratify)
    kept_idx, val_idx = torch.from_numpy(np.sort(kept)), torch.from_numpy(np.sort(val))
    return (TensorDataset(*(t[kept_idx] for t in train.tensors)),
            TensorDataset(*(t[val_idx] for t in train.tensors)))


DataSource = ImageFolderSource | TableSource | ImportSource
"""One of the three kinds of ``data:`` section."""


def parse_data(section: Any, *, root: Path) -> DataSource:
    """Read the ``data:`` section; relative paths are relative to ``root``.

    Raises:
        SourceError: If it names no source or several, or a key is unknown or wrong.
    """
    data = _mapping(section, "data")
    root = _root(data, "data", root)
    kinds = [key for key in ("image_folder", "table", "class_path") if key in data]
    if len(kinds) != 1:
        raise SourceError("data: name exactly one source: image_folder, table or class_path"
                          + (f" (got {', '.join(kinds)})" if kinds else ""))
    common: dict[str, Any] = {"root": root}
    if "val_fraction" in data:
        common["val_fraction"] = _fraction(data["val_fraction"], "data.val_fraction")
    if "split_seed" in data:
        common["split_seed"] = _int(data["split_seed"], "data.split_seed")
    kind = kinds[0]
    if kind == "image_folder":
        _known(data, ("image_folder", "image_size", "mean", "std", "grayscale", *_COMMON_KEYS),
               "data")
        size = data.get("image_size")
        if size is not None and not (isinstance(size, int) and size > 0) and not (
                isinstance(size, list) and len(size) == 2
                and all(isinstance(s, int) and s > 0 for s in size)):
            raise SourceError(f"data.image_size: expected a size or [height, width], got {size!r}")
        stats = {}
        for key in ("mean", "std"):
            value = data.get(key)
            if value is not None and (not isinstance(value, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
                raise SourceError(f"data.{key}: expected a list of numbers, one per channel, "
                                  f"got {value!r}")
            stats[key] = tuple(float(v) for v in value) if value is not None else None
        if stats["std"] is not None and stats["mean"] is None:
            raise SourceError("data.std: give data.mean too")
        return ImageFolderSource(
            image_folder=_path(data["image_folder"], "data.image_folder", root),
            image_size=tuple(size) if isinstance(size, list) else size,
            mean=stats["mean"], std=stats["std"], grayscale=bool(data.get("grayscale", False)),
            **common)
    if kind == "table":
        _known(data, ("table", "label", "features", "val_table", "test_table", *_COMMON_KEYS),
               "data")
        if not isinstance(data.get("label"), str):
            raise SourceError("data.label: name the label column of the table, e.g. label: y")
        features = data.get("features")
        if features is not None and (not isinstance(features, list) or not features):
            raise SourceError(f"data.features: expected a list of column names, got {features!r}")
        return TableSource(
            table=_path(data["table"], "data.table", root), label=data["label"],
            features=tuple(str(f) for f in features) if features else None,
            val_table=_path(data["val_table"], "data.val_table", root)
            if data.get("val_table") is not None else None,
            test_table=_path(data["test_table"], "data.test_table", root)
            if data.get("test_table") is not None else None,
            **common)
    _known(data, ("class_path", "init_args", *_COMMON_KEYS), "data")
    return ImportSource(class_path=str(data["class_path"]),
                        init_args=_mapping(data.get("init_args"), "data.init_args"), **common)
