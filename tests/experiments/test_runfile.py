"""Run files that name a user's own teacher and data, end to end through the CLI entry point."""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from user_project import write_project

from protege.cli import main
from protege.experiments import (
    RunInputs,
    Source,
    SourceError,
    load_inputs,
    read_run_file,
    starter_config,
)

SEARCH = """
n_trials: 2
strategy: random
constraints: {max_accuracy_drop: 0.5}
distill: {epochs: 1, finetune_epochs: 1}
"""

SOURCES = {
    "image_folder": """
teacher:
  class_path: my_models.SmallCNN
  init_args: {num_classes: 3}
  weights: cnn.pt
  input_shape: [3, 8, 8]
data:
  image_folder: images
""",
    "table": """
teacher:
  class_path: my_models:mlp
  init_args: {in_features: 6}
  weights: mlp.pt
data:
  table: table.csv
  label: y
  val_fraction: 0.2
""",
    "datamodule": """
teacher:
  class_path: my_models:mlp
  init_args: {in_features: 6}
  weights: mlp.pt
data:
  class_path: my_models.TinyDataModule
  init_args: {samples: 240}
""",
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(tmp_path_factory.mktemp("project"))


def _config(project: Path, text: str, name: str = "my.yaml") -> Path:
    path = project / name
    path.write_text(textwrap.dedent(text))
    return path


def _source(kind: str, *changes: tuple[str, str]) -> str:
    """``SOURCES[kind]`` with each ``(old, new)`` replaced; a change that matches nothing fails."""
    text = SOURCES[kind]
    for old, new in changes:
        assert old in text, f"{old!r} is not in SOURCES[{kind!r}]"
        text = text.replace(old, new)
    return text


def _load(project: Path, kind: str, *changes: tuple[str, str], more: str = "") -> RunInputs:
    """``load_inputs`` of ``SOURCES[kind]`` so changed, with ``more`` appended to it."""
    return load_inputs(_config(project, _source(kind, *changes) + more, "load.yaml"))


def _cli(*argv: str) -> tuple[int, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(list(argv))
    return code, printed.getvalue()


@pytest.mark.parametrize("kind", list(SOURCES))
def test_own_teacher_and_data_run_resume_export_and_report_from_the_cli(
        kind, project, tmp_path, monkeypatch):
    config = _config(project, SOURCES[kind] + SEARCH, f"{kind}.yaml")
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the config, not the cwd
    code, printed = _cli("run", str(config), "--out", str(out))
    assert code == 0, printed
    assert "pick: trial" in printed and "3 classes" in printed
    recorded = yaml.safe_load((out / "config.yaml").read_text())  # a run file itself
    assert Path(recorded["teacher"]["weights"]).is_absolute()
    assert recorded["teacher"]["root"] == str(project)

    code, printed = _cli("resume", "run", "--set", "n_trials=3")  # a relative run folder
    assert code == 0, printed
    trials = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert len(trials) == 3
    done = next(t["number"] for t in trials if t["outcome"] == "trained")
    if kind == "table":  # a worker joins the study from the run folder's config.yaml
        code, printed = _cli("worker", str(out / "config.yaml"), "--out", str(out),
                             "--set", "n_trials=4", "--storage", f"sqlite:///{out / 'study.db'}")
        assert code == 0 and "worker done: the study holds 4 trials" in printed, printed
    code, printed = _cli("export", str(out), "--trial", str(done))
    assert code == 0, printed
    assert (out / f"trial-{done}" / "student.onnx").stat().st_size > 0
    code, printed = _cli("report", str(out))
    assert code == 0 and "report.html" in printed


def test_the_benchmark_shorthand_is_the_same_mechanism(tmp_path):
    config = _config(tmp_path, "task: digits\nseed: 3\n")
    _, source = read_run_file(config)
    assert source.teacher.class_path == "protege.experiments:benchmark_teacher"
    assert dict(source.teacher.init_args) == {"task": "digits", "seed": 3}
    assert source.data.to_dict()["class_path"] == "protege.experiments:benchmark_data"


def test_a_lightning_checkpoint_loads_its_state_dict(project, tmp_path):
    state = torch.load(project / "mlp.pt", weights_only=True)
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}},
               tmp_path / "mlp.ckpt")
    inputs = _load(project, "table", ("weights: mlp.pt", f"weights: {tmp_path / 'mlp.ckpt'}"))
    for name, value in inputs.teacher.state_dict().items():
        assert torch.equal(value, state[name])


def test_integer_token_ids_stay_integers_through_a_search(project, tmp_path):
    config = _config(project, textwrap.dedent("""
        teacher: {class_path: my_models.TokenNet, input_dtype: int64}
        data: {class_path: my_models.tokens, val_fraction: 0.25}
        """) + SEARCH, "tokens.yaml")
    inputs = load_inputs(config)
    assert inputs.example_input.dtype == torch.int64
    assert inputs.train.tensors[0].dtype == torch.int64
    assert len(inputs.val) == 15 and len(inputs.train) == 45
    code, printed = _cli("run", str(config), "--out", str(tmp_path / "run"))
    assert code == 0, printed
    assert "input [5] int64" in printed and "max abs difference against PyTorch" in printed


def test_a_missing_validation_split_is_carved_with_a_fixed_seed(project):
    first, second = _load(project, "table", more=SEARCH), _load(project, "table", more=SEARCH)
    assert len(first.val) == 48 and len(first.train) == 192
    assert torch.equal(first.val.tensors[0], second.val.tensors[0])


def test_image_folder_transforms_resize_and_normalise(project):
    inputs = _load(project, "image_folder", ("input_shape: [3, 8, 8]", "input_shape: [3, 6, 6]"),
                   more="  image_size: 6\n  mean: [0.5, 0.5, 0.5]\n  std: [0.25, 0.25, 0.25]\n")
    assert tuple(inputs.example_input.shape) == (1, 3, 6, 6)
    assert float(inputs.train.tensors[0].min()) < 0  # normalised
    assert inputs.test is not None and len(inputs.test) == 30


def _mistake(kind: str, name: str, old: str, new: str, message: str) -> object:
    return pytest.param(kind, (old, new), message, id=name)


MISTAKES = [
    _mistake("image_folder", "module does not import", "my_models.SmallCNN", "my_modelz.SmallCNN",
             "teacher.class_path: cannot import module 'my_modelz'"),
    _mistake("image_folder", "name is missing", "my_models.SmallCNN", "my_models.SmallCNX",
             "module 'my_models' has no name 'SmallCNX'"),
    _mistake("image_folder", "weights do not fit", "num_classes: 3}", "num_classes: 3, width: 4}",
             "cnn.pt does not fit my_models.SmallCNN: shapes differ:"),
    _mistake("image_folder", "weights of another model", "weights: cnn.pt", "weights: mlp.pt",
             "missing keys features.0.weight"),
    _mistake("image_folder", "missing folder", "image_folder: images", "image_folder: imagez",
             "imagez/train not found"),
    _mistake("image_folder", "class count", "num_classes: 3}\n  weights: cnn.pt",
             "num_classes: 4}", "the data has 3 classes but the teacher has 4 outputs"),
    _mistake("image_folder", "input shape", "[3, 8, 8]", "[3, 9, 9]",
             "teacher.input_shape is [3, 9, 9] but the training inputs have shape"),
    _mistake("image_folder", "init_args", "{num_classes: 3}", "{classes: 3}",
             "teacher.init_args do not fit my_models.SmallCNN"),
    _mistake("image_folder", "two sources", "image_folder: images",
             "image_folder: images\n  table: table.csv", "data: name exactly one source"),
    _mistake("image_folder", "unknown key", "image_folder: images",
             "image_folder: images\n  size: 3", "unknown key 'data.size'"),
    _mistake("table", "missing column", "label: y", "label: target",
             "data.label: column 'target' is not in"),
    _mistake("table", "missing feature", "label: y", "label: y\n  features: [f0, f9]",
             "data.features: column 'f9' is not in table.csv"),
    _mistake("table", "not (input, label)", "table: table.csv\n  label: y",
             "class_path: my_models.dict_data",
             "the training data yields a dict with keys image, label, not (input, label) pairs"),
    _mistake("table", "missing table", "table: table.csv", "table: nothing.csv",
             "data.table: file not found"),
]


@pytest.mark.parametrize("kind, change, message", MISTAKES)
def test_every_mistake_exits_2_with_one_line_before_the_run_folder(
        kind, change, message, project, tmp_path, capsys):
    config = _config(tmp_path, _source(kind, change) + SEARCH)
    for path in ("my_models.py", "cnn.pt", "mlp.pt", "table.csv"):
        (tmp_path / path).symlink_to(project / path)
    (tmp_path / "images").symlink_to(project / "images")
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("protege: error: ") and message in err, err
    assert "\n" not in err
    assert not (tmp_path / "run").exists()


def test_run_file_needs_a_teacher_and_data(tmp_path, capsys):
    for text, message in (("n_trials: 2\n", "name what to search on"),
                          ("task: digits\nteacher: {class_path: a.B}\n", "not both"),
                          ("teacher: {class_path: a.B}\n", "data: missing")):
        assert main(["run", str(_config(tmp_path, text)), "--out", str(tmp_path / "r")]) == 2
        assert message in capsys.readouterr().err


def test_a_run_folder_keeps_its_teacher_and_data(project, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(
        {"teacher": {"class_path": "my_models:mlp", "root": str(project)},
         "data": {"table": str(project / "table.csv"), "label": "y"}}))
    assert main(["resume", str(tmp_path), "--set", "data.label=z"]) == 2
    assert "teacher and data are fixed" in capsys.readouterr().err


def test_init_writes_a_commented_starter_that_reads_back(project, tmp_path, monkeypatch):
    monkeypatch.chdir(project)
    out = tmp_path / "starter.yaml"
    code, printed = _cli("init", "my_models.SmallCNN", "--out", str(out))
    assert code == 0 and "wrote" in printed
    text = out.read_text()
    assert "num_classes: 3" in text and "width: 8" in text and "# " in text
    for key in ("max_accuracy_drop: 0.01", "strategy: null", "finetune_epochs:", "val_fraction"):
        assert key in text
    config, source = read_run_file(out)
    assert config.resolve().strategy == "tpe" and source.teacher.class_path == "my_models.SmallCNN"
    assert main(["init", "my_models.SmallCNN", "--out", str(out)]) == 2  # never overwrites
    assert "numpy" not in starter_config("torchvision.models.resnet18")


def test_init_names_a_model_that_does_not_import(tmp_path, capsys):
    assert main(["init", "no_such_module.Net"]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err


def test_source_error_is_a_value_error():
    assert issubclass(SourceError, ValueError)


@pytest.mark.slow  # about a minute on 2 shared cores: a search arm, a baseline and the report
def test_compare_names_its_teacher_and_data_the_same_way(project, tmp_path):
    text = SOURCES["table"] + "  test_table: table.csv\n" + textwrap.dedent("""
        seeds: [0]
        report: own_compare
        budget: {trials: 2}
        search: {distill: {epochs: 1, finetune_epochs: 1}}
        arms:
          protege: {}
          uniform: {kind: uniform, ratios: [0.5]}
        """)
    config = _config(project, text, "compare.yaml")
    code, printed = _cli("compare", str(config), "--out", str(tmp_path / "out"),
                         "--results", str(tmp_path / "results"))
    assert code == 0, printed
    assert "| protege | search |" in printed and "| uniform | uniform |" in printed
    saved = yaml.safe_load((tmp_path / "out" / "compare.yaml").read_text())
    assert Path(saved["source"]["teacher"]["weights"]).is_absolute()
    assert saved["source"]["teacher"]["root"] == str(project)


def test_a_parquet_table_reads_like_a_csv(project, tmp_path):
    import pandas as pd

    pd.read_csv(project / "table.csv").to_parquet(tmp_path / "table.parquet")
    inputs = _load(project, "table", ("table: table.csv", f"table: {tmp_path / 'table.parquet'}"))
    assert inputs.train.tensors[0].shape[1] == 6 and inputs.classes == 3


def test_a_benchmark_run_folder_rebuilds_its_task_and_a_python_run_is_named(tmp_path):
    from protege.experiments import load_source

    (tmp_path / "config.yaml").write_text("task: digits\nseed: 2\n")
    source = load_source(tmp_path)
    assert source.task == "digits" and source.teacher.init_args["seed"] == 2
    (tmp_path / "config.yaml").write_text("seed: 2\n")
    with pytest.raises(ValueError, match="a run made from Python"):
        load_source(tmp_path)


def test_a_shuffling_train_dataloader_gives_the_same_tensors_every_time(project):
    first, second = _load(project, "datamodule"), _load(project, "datamodule")
    assert torch.equal(first.train.tensors[0], second.train.tensors[0])  # shuffle=True in it


def test_a_datamodule_with_test_data_gives_a_test_split(project):
    inputs = _load(project, "datamodule", ("TinyDataModule", "TestedDataModule"))
    assert inputs.test is not None and len(inputs.test) == len(inputs.val) == 48


def test_label_names_map_to_their_sorted_order(project, tmp_path):
    import pandas as pd

    frame = pd.read_csv(project / "table.csv")
    frame["y"] = frame["y"].map({0: "cat", 1: "dog", 2: "ant"})
    frame.to_csv(tmp_path / "named.csv", index=False)
    inputs = _load(project, "table", ("table: table.csv", f"table: {tmp_path / 'named.csv'}"))
    labels = torch.cat([inputs.train.tensors[1], inputs.val.tensors[1]])
    assert sorted(labels.unique().tolist()) == [0, 1, 2]  # ant, cat, dog
    assert int((labels == 0).sum()) == int((torch.tensor(frame["y"].eq("ant").to_numpy())).sum())


def test_a_boolean_column_beside_numbers_becomes_a_float_feature(project, tmp_path):
    import pandas as pd

    frame = pd.read_csv(project / "table.csv")
    frame["f5"] = frame["f5"] > 0
    frame.to_csv(tmp_path / "flags.csv", index=False)
    inputs = _load(project, "table", ("table: table.csv", f"table: {tmp_path / 'flags.csv'}"))
    features = inputs.train.tensors[0]
    assert features.dtype == torch.float32 and set(features[:, 5].tolist()) <= {0.0, 1.0}


def test_a_table_of_floats_is_not_cast_to_an_integer_input_dtype(project):
    with pytest.raises(SourceError, match="the training data has float32 inputs but "
                                          "teacher.input_dtype is int64"):
        _load(project, "table", ("weights: mlp.pt", "weights: mlp.pt\n  input_dtype: int64"))


def test_negative_labels_are_named_even_when_validation_is_carved(project, tmp_path):
    import pandas as pd

    frame = pd.read_csv(project / "table.csv")
    frame["y"] -= 1
    frame.to_csv(tmp_path / "shifted.csv", index=False)
    with pytest.raises(SourceError, match=r"the training labels range over \[-1, 1\] but the "
                                          "teacher has 3 outputs"):
        _load(project, "table", ("table: table.csv", f"table: {tmp_path / 'shifted.csv'}"))


def test_data_that_imports_the_users_modules_while_it_is_read(tmp_path):
    (tmp_path / "lazy_labels.py").write_text("def label(i):\n    return i % 3\n")
    (tmp_path / "lazy_data.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import Dataset


        class Lazy(Dataset):
            def __len__(self):
                return 30

            def __getitem__(self, i):
                import lazy_labels  # first imported here, as the data is read

                return torch.full((4,), float(i)), lazy_labels.label(i)


        def make():
            return Lazy(), Lazy()
        """))
    source = Source.from_dict({"teacher": {"class_path": "torch.nn.Linear"},
                               "data": {"class_path": "lazy_data.make"}}, root=tmp_path)
    splits = source.data.load()
    assert splits.train.tensors[1].tolist() == [i % 3 for i in range(30)]
