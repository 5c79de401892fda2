"""Typed plugins: the config type is the base class's type parameter, one call per kind, cross-field validation."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from harness import AttackPlugin, LoadedModel, MetricPlugin, PluginConfig, StageContext, TrainerPlugin
from harness.cli import main

from .conftest import ROOT, write_suite


class _Options(PluginConfig):
    n: int = 1


class _Other(PluginConfig):
    m: int = 2


def test_config_comes_from_the_type_parameter():
    from harness_plugins.attacks.hotflip import HotFlipAttack, HotFlipConfig
    from harness_plugins.training.trainer import MonotonicConfig, MonotonicTrainer, RecoveryTrainer, BaselineConfig

    assert HotFlipAttack.Config is HotFlipConfig
    assert MonotonicTrainer.Config is MonotonicConfig
    assert RecoveryTrainer.Config is BaselineConfig  # the generic base sets its own by hand

    class Typed(MetricPlugin[_Options]):
        name = "typed"

    assert Typed.Config is _Options
    assert Typed(_Options(n=3)).config.n == 3


def test_a_config_that_contradicts_the_type_parameter_is_refused():
    with pytest.raises(TypeError, match="contradicts its base's type parameter _Options"):
        class Wrong(MetricPlugin[_Options]):
            name = "wrong"
            Config = _Other


def test_old_style_plugin_with_a_config_classvar_keeps_its_config():
    class OldStyle(MetricPlugin):
        name = "old_style"
        Config = _Options

    class Child(OldStyle):  # a plain subclass inherits its parent's config, parametrised or not
        name = "child"

    assert OldStyle.Config is _Options and Child.Config is _Options


def test_each_kind_maps_run_stage_to_its_method(tmp_path):
    calls: list[str] = []

    class Metric(MetricPlugin[_Options]):
        name = "m"

        def evaluate(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
            calls.append("evaluate")
            return {"n": self.config.n}

    class Attack(AttackPlugin[_Options]):
        name = "a"

        def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
            calls.append("attack")
            return {}

        def is_control(self) -> bool:
            return True

    class Trainer(TrainerPlugin[_Options]):
        name = "t"

        def train(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
            calls.append("train")
            return {}

    class Ctx:
        checkpoint_dir = tmp_path / "checkpoint"

    ctx: Any = Ctx()
    model: Any = None
    assert Metric(_Options(n=4)).run_stage(model, ctx) == {"n": 4}
    Attack(_Options()).run_stage(model, ctx)
    Trainer(_Options()).run_stage(model, ctx)
    assert calls == ["evaluate", "attack", "train"]
    assert ctx.checkpoint_dir.is_dir()  # a trainer's stage gets its checkpoint directory
    assert Attack(_Options()).result_fields() == {"control": True, "control_of": None} and Metric(_Options()).result_fields() == {}
    assert Trainer.changes_model and not Metric.changes_model and not Attack.changes_model


def test_no_config_casts_left_in_plugins():
    casts = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "plugins").rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"self\.config.*# type: ignore", line)]
    assert casts == []


def test_cross_field_error_is_one_line_at_validate(tmp_path, capsys):
    path = write_suite(tmp_path, f"""
        name: shape
        seeds: [1]
        models:
          rand:
            plugin: hf_causal_lm
            path: {ROOT / "plugins" / "models" / "pythia_tiny"}
            random_init: {{hidden_size: 100, num_attention_heads: 3}}
        metrics:
          perplexity:
            data: {{dataset: json, data_files: "@DATA@/test.jsonl", split: train, limit: 2}}
        """)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "models.rand.random_init: num_attention_heads (3) must divide hidden_size (100)" in err
    assert "fix: choose a hidden_size that is a multiple of 3" in err and "Traceback" not in err


def test_random_init_builds_the_overridden_shape_from_the_seed():
    from harness_plugins.models.hf_causal_lm import HFCausalLMConfig, RandomInit, _random_model

    weights = str(ROOT / "plugins" / "models" / "pythia_tiny")
    init = RandomInit(seed=3, hidden_size=64, num_attention_heads=2, num_hidden_layers=1, intermediate_size=128)
    kwargs = {"revision": None, "trust_remote_code": False}
    a = _random_model(weights, init, torch.float32, kwargs)
    b = _random_model(weights, init, torch.float32, kwargs)
    assert (a.config.hidden_size, a.config.num_attention_heads, a.config.num_hidden_layers) == (64, 2, 1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # unset, the option stays out of the config's dump (and so out of every existing cache key)
    assert "random_init" not in HFCausalLMConfig(path=weights).model_dump()
    assert HFCausalLMConfig(path=weights, random_init=init).model_dump()["random_init"]["hidden_size"] == 64
