"""Plugin discovery: built-ins and third-party packages come through the same entry-point door."""

from __future__ import annotations

import importlib.metadata as md

import pytest

from harness import MetricPlugin, hookimpl
from harness.plugins import ENTRY_POINT_GROUP, Registry, load_registry, make_plugin_manager
from tests.conftest import ROOT, pip_installed, run_cli, write_suite

EXAMPLE = ROOT / "examples" / "harness-example-metric"


def test_builtin_plugins_are_registered_through_entry_points():
    registry = load_registry(refresh=True)
    eps = {ep.name: ep.value for ep in md.entry_points(group=ENTRY_POINT_GROUP)}
    for kind, name in [("model", "hf_causal_lm"), ("model", "pythia_tiny"), ("metric", "perplexity")]:
        info = registry.get(kind, name)
        assert info.package == "harness"
        assert info.module in eps.values()


def test_unknown_plugin_suggests_close_name():
    with pytest.raises(KeyError, match="did you mean 'perplexity'"):
        load_registry().get("metric", "perplexiti")


def test_plugin_registered_in_code_uses_the_same_hooks():
    class Constant(MetricPlugin):
        """Always 1."""

        name = "constant"

    class Module:
        @hookimpl
        def harness_metrics(self):
            return [Constant]

    registry = Registry(make_plugin_manager(extra_plugins=[Module()], entry_points=False))
    assert registry.get("metric", "constant").cls is Constant


def test_cli_list_shows_kind_and_package():
    proc = run_cli("list")
    assert proc.returncode == 0
    assert "pythia_tiny" in proc.stdout and "perplexity" in proc.stdout and "harness" in proc.stdout


@pytest.fixture()
def example_installed():
    with pip_installed(EXAMPLE, "harness-example-metric"):
        yield


def test_out_of_tree_plugin_installs_lists_and_runs_in_a_suite(tmp_path, example_installed):
    listing = run_cli("list")
    assert "top1_accuracy" in listing.stdout and "harness-example-metric" in listing.stdout
    suite = write_suite(tmp_path, """
        models:
          tiny: {plugin: pythia_tiny}
        metrics:
          top1_accuracy:
            data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 3}
    """)
    proc = run_cli("run", str(suite), "--out", str(tmp_path / "run"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads((tmp_path / "run" / "stages" / "metrics" / "top1_accuracy" / "tiny" / "result.json").read_text())
    assert result["package"] == "harness-example-metric"
    assert 0.05 < result["metrics"]["top1_accuracy"] < 0.9  # a trained model: well above chance (1/4096)
