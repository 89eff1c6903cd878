"""A YAML run file, or a run folder, turned into a teacher, its data and a search config.

A run file is one search config plus the keys that say what to search on:

- ``task: NAME``: a benchmark task (shorthand for its teacher and data);
- ``teacher:`` and ``data:``: the user's own (see :mod:`protege.experiments._sources`).

:func:`load_inputs` reads either a run file or a run folder and returns
:class:`RunInputs`. ``RunInputs.source.to_dict()`` is what the run folder's
``config.yaml`` records beside the search config (``protege.create_study(...,
source=...)``): ``task:``, or the resolved ``teacher:`` and ``data:`` sections (absolute
paths, import roots), so that ``resume``, ``worker``, ``export`` and the rest need only
the folder.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from protege.common import read_yaml
from protege.experiments._sources import (
    DataSource,
    SourceError,
    Splits,
    TeacherSource,
    import_object,
    parse_data,
    parse_teacher,
)
from protege.experiments._tasks import TASKS
from protege.search import SOURCE_KEYS, Config, ConfigError, apply_overrides

__all__ = [
    "RunInputs",
    "Source",
    "benchmark_source",
    "build_inputs",
    "load_inputs",
    "load_source",
    "read_run_file",
    "starter_config",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Source:
    """What a run searches on: the teacher and the data, resolved.

    Attributes:
        teacher: How to build the teacher.
        data: Where the data comes from.
        task: The benchmark task's name when the run file said ``task:``, else None.
    """

    teacher: TeacherSource
    data: DataSource
    task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """What a run folder records: ``task:`` for a benchmark, else the resolved
        ``teacher:`` and ``data:`` sections (absolute paths, each with its import ``root``),
        so that a later command needs nothing but the folder."""
        if self.task is not None:
            return {"task": self.task}
        return {"teacher": self.teacher.to_dict(), "data": self.data.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, root: Path, seed: int = 0) -> Source:
        """Read ``task:``, or ``teacher:`` and ``data:``; relative paths resolve against
        ``root`` (a recorded section's own ``root`` wins); ``seed`` seeds a benchmark's
        teacher."""
        if data.get("task") is not None and "teacher" not in data:
            return benchmark_source(str(data["task"]), seed=seed, root=root)
        return cls(teacher=parse_teacher(data.get("teacher"), root=root),
                   data=parse_data(data.get("data"), root=root))

    def describe(self) -> str:
        """One phrase naming the teacher and the data, for the CLI."""
        if self.task is not None:
            return f"task {self.task}"
        data = self.data.to_dict()
        where = data.get("image_folder") or data.get("table") or data.get("class_path")
        weights = f" ({self.teacher.weights.name})" if self.teacher.weights else ""
        return f"teacher {self.teacher.class_path}{weights} on {where}"


def benchmark_source(task: str, *, seed: int = 0, root: Path | None = None) -> Source:
    """The benchmark ``task`` written as ``teacher:`` / ``data:`` sections (one code path).

    Raises:
        ConfigError: If ``task`` is not a benchmark task.
    """
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)} (or name "
                          "your own with teacher: and data:)")
    root = root or Path.cwd()
    return Source(
        teacher=parse_teacher({"class_path": "protege.experiments:benchmark_teacher",
                               "init_args": {"task": task, "seed": seed}}, root=root),
        data=parse_data({"class_path": "protege.experiments:benchmark_data",
                         "init_args": {"task": task}}, root=root),
        task=task)


def split_run_file(data: Mapping[str, Any], *, root: Path) -> tuple[Config, Source]:
    """The search config and the source of a run file's mapping.

    Raises:
        ConfigError: A bad search key first (cheap to find), then a bad source key.
    """
    task = data.get("task")
    has_own = "teacher" in data or "data" in data
    if task is not None and has_own:
        raise ConfigError("task: give either task: (a benchmark) or teacher: and data: "
                          "(your own), not both")
    if task is None and not has_own:
        raise ConfigError("name what to search on: teacher: and data: (your own model and "
                          "data; `protege init MODEL` writes a starter), or task: mnist1d")
    if task is None and ("teacher" not in data or "data" not in data):
        missing = "teacher" if "teacher" not in data else "data"
        raise ConfigError(f"{missing}: missing; a run file needs both teacher: and data:")
    config = Config.from_dict(data)  # it leaves the source keys to us
    if task is not None and not isinstance(task, str):
        raise ConfigError(f"task: expected a task name, got {task!r}")
    return config, Source.from_dict(data, root=root, seed=config.seed)


def read_run_file(path: str | Path, overrides: Sequence[str] = ()) -> tuple[Config, Source]:
    """Read a run file with a safe loader and apply ``--set`` overrides (any key).

    Relative paths in ``teacher:`` and ``data:`` are relative to the file's folder.
    """
    path = Path(path)
    data = apply_overrides(read_yaml(path), list(overrides))
    return split_run_file(data, root=path.resolve().parent)


def load_source(run_dir: str | Path) -> Source:
    """The teacher and data a run folder was made on (the source keys of its ``config.yaml``).

    Raises:
        FileNotFoundError: If ``run_dir`` is not a run folder.
        ConfigError: If it records no source the CLI can rebuild (a run made from Python).
    """
    return _folder_run_file(Path(run_dir), ())[1]


def _folder_run_file(run_dir: Path, overrides: Sequence[str]) -> tuple[Config, Source]:
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a protege run folder (no config.yaml)")
    fixed = [item for item in overrides if item.split("=")[0].split(".")[0] in SOURCE_KEYS]
    if fixed:
        raise ConfigError(f"--set {fixed[0]!r}: a run folder's teacher and data are fixed; "
                          "start a new run to change them")
    data = apply_overrides(read_yaml(run_dir / "config.yaml"), list(overrides))
    if not any(key in data for key in SOURCE_KEYS):
        raise ConfigError(
            f"{run_dir}: its config.yaml records no task: or teacher: and data: (a run made "
            "from Python): the CLI cannot rebuild its teacher. From Python: student = "
            "protege.load_student(teacher, 'best/arch.json', 'best/student.pt'), then "
            "export_onnx(student, example_input, 'student.onnx') (from protege.search import "
            "export_onnx)")
    return split_run_file(data, root=run_dir.resolve())


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RunInputs:
    """Everything a search needs, built from a run file or a run folder.

    Attributes:
        teacher: The trained teacher, in eval mode.
        example_input: A batch of one training input (shape and dtype kept).
        train: Training data.
        val: Validation data (carved from training with a fixed seed when none was given).
        test: Test data, or None.
        config: The search config.
        source: How the teacher and data were built (what ``source.yaml`` records).
        classes: The teacher's number of outputs.
    """

    teacher: nn.Module
    example_input: torch.Tensor
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset | None
    config: Config
    source: Source
    classes: int


def build_inputs(config: Config, source: Source) -> RunInputs:
    """Load the data, build the teacher, and check that they belong together.

    Raises:
        SourceError: One line for each mistake: an import, the weights, what the data
            yields, a missing folder or column, a class count the teacher lacks, an
            input shape or dtype other than ``teacher.input_shape`` / ``input_dtype``.
    """
    splits = source.data.load(dtype=source.teacher.dtype)
    teacher = source.teacher.build()
    example = splits.train.tensors[0][:1].clone()
    shape = source.teacher.input_shape
    if shape is not None and tuple(example.shape[1:]) != shape:
        raise SourceError(f"teacher.input_shape is {list(shape)} but the training inputs have "
                          f"shape {list(example.shape[1:])} (check data.image_size, "
                          "data.features or the input shape)")
    classes = _outputs(teacher, example)
    _check_classes(splits, classes, source)
    return RunInputs(teacher=teacher, example_input=example, train=splits.train, val=splits.val,
                     test=splits.test, config=config, source=source, classes=classes)


def _outputs(teacher: nn.Module, example: torch.Tensor) -> int:
    try:
        with torch.no_grad():
            output = teacher(example)
    except Exception as exc:
        dtype = str(example.dtype).removeprefix("torch.")
        raise SourceError(f"the teacher fails on one training input of shape "
                          f"{list(example.shape[1:])} ({dtype}): "
                          f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        what = (f"shape {list(output.shape)}" if isinstance(output, torch.Tensor)
                else type(output).__name__)
        raise SourceError(f"the teacher must return logits of shape (batch, classes), got "
                          f"{what}")
    return int(output.shape[1])


def _check_classes(splits: Splits, classes: int, source: Source) -> None:
    if splits.classes is not None and splits.classes != classes:
        raise SourceError(f"the data has {splits.classes} classes but the teacher has "
                          f"{classes} outputs (check teacher.init_args, e.g. num_classes)")
    for name, data in (("training", splits.train), ("validation", splits.val),
                       ("test", splits.test)):
        if data is None:
            continue
        labels = data.tensors[1]
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise SourceError(f"the {name} labels range over [{low}, {high}] but the teacher "
                              f"has {classes} outputs: labels must be class indices "
                              f"0..{classes - 1} (is this the teacher of this data?)")


def load_inputs(path: str | Path, overrides: Sequence[str] = ()) -> RunInputs:
    """Build teacher, data and config from a run file or a run folder.

    A run folder's ``config.yaml`` is itself a run file whose ``teacher:`` and ``data:``
    are fixed: ``--set`` may change search settings (e.g. ``n_trials``), not them.

    Raises:
        ConfigError: For a bad key or a source that cannot be built (one line).
        FileNotFoundError: If ``path`` does not exist.
    """
    path = Path(path)
    if path.is_dir():
        config, source = _folder_run_file(path, overrides)
    else:
        config, source = read_run_file(path, overrides)
    return build_inputs(config, source)


# --------------------------------------------------------------------------- protege init


def _arg_lines(factory: Any) -> list[str]:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return ["    {}"]
    lines = []
    for p in parameters:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
            continue
        if p.default is inspect.Parameter.empty:
            lines.append(f"    {p.name}: null   # required")
            continue
        default = p.default
        if not isinstance(default, (int, float, str, bool, list, tuple, type(None))):
            lines.append(f"    # {p.name}: {default!r}   (default; not expressible in YAML)")
            continue
        text = yaml.safe_dump({p.name: list(default) if isinstance(default, tuple)
                               else default}, default_flow_style=True).strip()[1:-1]
        lines.append(f"    {text}")
    return lines or ["    {}"]


def _docs(cls: type) -> dict[str, str]:
    """First sentence of each ``Args:`` entry of a Google-style docstring."""
    docs: dict[str, str] = {}
    names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    current = None
    for line in (inspect.getdoc(cls) or "").splitlines():
        head, sep, text = line.strip().partition(": ")
        if sep and head in names and line.startswith("    ") and not line.startswith("     "):
            current = head
            docs[current] = text
        elif current is not None and line.startswith("        "):
            docs[current] += " " + line.strip()
        else:
            current = None
    return {key: re.split(r"(?<!e\.g)(?<!i\.e)\. ", value)[0].rstrip(".")
            for key, value in docs.items()}


def _plain(text: str) -> str:
    """A docstring phrase without its reST markup (``x``, :data:`X`), for a YAML comment."""
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def _settings_lines(cls: type, values: Mapping[str, Any], indent: str = "") -> list[str]:
    docs = _docs(cls)
    hints = typing.get_type_hints(cls)
    lines = []
    for name, value in values.items():
        note = f"   # {_plain(docs[name])}" if name in docs else ""
        nested = hints.get(name)
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):
            lines.append(f"{indent}{name}:{note}")
            lines += _settings_lines(nested, value, indent + "  ")
            continue
        text = yaml.safe_dump({name: value}, default_flow_style=True, width=10_000)
        lines.append(f"{indent}{text.strip()[1:-1]}{note}")
    return lines


def starter_config(class_path: str, *, root: Path | None = None) -> str:
    """A commented run file for the model ``class_path``, every key at its default.

    Raises:
        SourceError: If ``class_path`` does not import.
    """
    factory = import_object(class_path, key="MODEL", root=root)
    settings = Config().to_dict()  # the declared defaults: level-dependent ones stay null
    lines = [
        f"# protege run file for {class_path}, written by `protege init`.",
        "# Run it with: protege run THIS_FILE   (relative paths are relative to this file)",
        "teacher:",
        f"  class_path: {class_path}   # a class or factory: module.Name or module:name",
        "  init_args:                  # its keyword arguments (defaults shown)",
        *_arg_lines(factory),
        "  weights: teacher.pt         # a state dict, or a checkpoint with a state_dict "
        "(Lightning .ckpt); loaded with weights_only=True",
        "  input_shape: null           # one sample, e.g. [3, 32, 32]; null: the shape of one "
        "training input",
        "  input_dtype: null           # float32, or int64 for token ids; null: the data's",
        "data:                         # exactly one of image_folder, table, class_path",
        "  image_folder: images/       # train/ val/ [test/] folders of class folders "
        "(torchvision ImageFolder)",
        "  image_size: null            # resize to this size (or [height, width])",
        "  mean: null                  # per-channel normalisation, e.g. [0.5, 0.5, 0.5]",
        "  std: null",
        "  grayscale: false            # read one channel instead of RGB",
        "  # table: data.csv           # CSV or Parquet (pandas); one row per sample",
        "  # label: y                  # the label column (class indices or names)",
        "  # features: null            # feature columns; null: all but the label",
        "  # val_table: null           # validation rows; null: carved from table",
        "  # test_table: null          # test rows, optional",
        "  # class_path: my_data.make  # returns (train, val[, test]) datasets or loaders, "
        "or a LightningDataModule",
        "  # init_args: {}",
        "  val_fraction: 0.1           # carved from training (fixed split_seed) when there "
        "is no validation data",
        "  split_seed: 0",
        "# Search settings, each at its default:",
        *_settings_lines(Config, settings),
    ]
    return "\n".join(lines) + "\n"
