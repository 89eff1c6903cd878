from __future__ import annotations

from pathlib import Path

import pytest

from protege.search import Config, ConfigError, Constraints, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_full_config_round_trips(tmp_path):
    path = write(tmp_path, """
task: digits
level: 1
strategy: nsga2
n_trials: 7
seed: 3
constraints: {max_accuracy_drop: 0.02, max_macs: 0.5}
distill: {alpha: 0.5, temperature: 2, epochs: 3}
""")
    config = load_config(path)
    assert config.strategy == "nsga2" and config.n_trials == 7
    assert config.constraints == Constraints(max_accuracy_drop=0.02, max_macs=0.5)
    assert config.distill.temperature == 2.0 and isinstance(config.distill.temperature, float)
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "text, message",
    [
        ("tsk: digits", "unknown key 'tsk'"),
        ("distill: {alpah: 0.5}", "unknown key 'distill.alpah'"),
        ("constraints: {max_mac: 0.5}", "unknown key 'constraints.max_mac'"),
        ("n_trials: many", "n_trials: expected int"),
        ("n_trials: -2", "n_trials: must be >= 1"),
        ("strategy: bogus", "unknown strategy 'bogus'"),
        ("level: 4", "level: must be 1, 2 or 3"),
        ("distill: {alpha: 1.5}", "distill.alpha: must be in"),
        ("constraints: {max_accuracy_drop: 2}", "max_accuracy_drop: must be in"),
        ("constraints: {max_macs: -1}", "max_macs: must be positive"),
        ("distill: 3", "distill: expected a mapping"),
        ("- a\n- b", "expected a mapping"),
        ("task: [unclosed", "not valid YAML"),
        ("latency: {precision: fp16}", "precision must be one of"),
        ("latency: {runtime: torch, precision: int8}", "needs runtime 'onnxruntime'"),
        ("latency: {batch: 32}", "unknown key 'latency.batch'"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_overrides(tmp_path):
    path = write(tmp_path, "task: digits\ndistill: {epochs: 3}\n")
    config = load_config(path, ["distill.epochs=5", "constraints.max_macs=0.25", "seed=9"])
    assert config.distill.epochs == 5 and config.constraints.max_macs == 0.25 and config.seed == 9
    with pytest.raises(ConfigError, match="unknown key 'distill.epoch'"):
        load_config(path, ["distill.epoch=5"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["seed"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_limits_resolve_fractions_and_absolutes():
    assert Constraints(max_macs=0.25).resolve(1000, 50) == (250.0, float("inf"))
    assert Constraints(max_macs=300, max_params=0.5).resolve(1000, 50) == (300.0, 25.0)


def test_level_presets_the_trial_budget():
    assert Config(level=1).resolve().n_trials == 30 and Config(level=3).trials == 80
    assert Config(level=3, n_trials=7).resolve().n_trials == 7
    assert Config.from_dict(Config(level=2).resolve().to_dict()).n_trials == 50
    assert Config(level=2).n_trials is None  # left for resolve(): nothing rewrites a field


def test_level_presets_the_epochs_of_a_trial_unless_given():
    def epochs(data):  # type: ignore[no-untyped-def]
        return Config.from_dict(data).resolve().distill.epochs

    assert epochs({"level": 1}) == 4 and epochs({"level": 3}) == 6
    assert epochs({"level": 3, "distill": {"epochs": 2}}) == 2
    assert epochs({"level": 2, "distill": {"alpha": 0.7}}) == 5
    assert Config(level=3).resolve().distill.epochs == 6  # however the config is built
    # The resolved config keeps the epochs it ran with: a resumed run gets the same.
    resolved = Config.from_dict({"level": 3}).resolve().to_dict()
    assert epochs({**resolved, "level": 1}) == 6


def test_a_config_written_before_the_renames_still_loads():
    old = Config.from_dict({"task": "digits", "pruning": {"gain": False},
                            "distill": {"teacher": "online", "epochs": 2}})
    assert old.rules.gain is False and old.distill.teacher_mode == "online"
    assert old.resolve().distill.epochs == 2


def test_latency_keys_resolve_the_runtime():
    cfg = Config.from_dict({"latency": {"precision": "int8", "batch_size": 32}})
    assert cfg.latency.runtime is None and cfg.latency.precision == "int8"
    resolved = cfg.resolve()
    assert resolved.latency.runtime in ("onnxruntime", "torch")
    assert resolved.latency.batch_size == 32
    assert Config.from_dict(resolved.to_dict()) == resolved
