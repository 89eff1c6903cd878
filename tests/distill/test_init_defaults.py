"""Distillation defaults that depend on how the student starts."""

from __future__ import annotations

import pytest
import torch

from protege.distill import INIT_TEMPERATURE, DistillConfig, DistillModule
from protege.search import Config


def test_the_temperature_is_resolved_by_init_unless_it_is_set():
    config = DistillConfig()
    assert config.temperature is None
    assert config.for_init("inherit").temperature == INIT_TEMPERATURE["inherit"] == 2.0
    assert config.for_init("scratch").temperature == INIT_TEMPERATURE["scratch"] == 1.0
    assert DistillConfig(temperature=4.0).for_init("scratch").temperature == 4.0
    with pytest.raises(ValueError, match="init must be one of"):
        config.for_init("pretrained")
    with pytest.raises(ValueError, match="distill.temperature: must be positive"):
        DistillConfig(temperature=0.0)


def test_the_search_config_resolves_the_temperature_by_its_init():
    assert Config.from_dict({}).distill.temperature is None  # resolve() fills it
    assert Config.from_dict({}).resolve().distill.temperature == 2.0
    scratch = Config.from_dict({"init": "scratch"}).resolve()
    assert scratch.distill.temperature == 1.0
    assert Config.from_dict(scratch.to_dict()) == scratch
    explicit = Config.from_dict({"init": "scratch", "distill": {"temperature": 3}}).resolve()
    assert explicit.distill.temperature == 3.0


def test_a_module_given_no_temperature_uses_the_inherited_one(tiny_net):
    module = DistillModule(tiny_net, config=DistillConfig(), total_steps=10)
    assert module.config.temperature == 2.0
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    terms = module.loss_terms((x, y, torch.randn(4, 10)))
    assert torch.isfinite(terms["loss"]) and terms["kd_loss"] > 0
