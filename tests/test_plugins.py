"""Plugin discovery: built-ins and third-party packages come through the same entry-point door."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import pytest

from harness import MetricPlugin, hookimpl
from harness._engine.plugins import ENTRY_POINT_GROUP, Registry, load_registry, make_plugin_manager
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


def _fake_distribution(tmp_path, package: str, entry_points: dict[str, str]) -> md.Distribution:
    """An installed-package record (dist-info) registering ``entry_points`` in the harness group."""
    info = tmp_path / f"{package.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n"
                                           + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return md.PathDistribution(info)


@pytest.mark.parametrize("first", [True, False])
def test_third_party_entry_point_with_a_builtins_name_is_an_error_naming_both_packages(tmp_path, monkeypatch, first):
    from harness._engine import plugins
    from harness.errors import HarnessError

    fake = _fake_distribution(tmp_path, "evil-gcg", {"gcg": "evil_gcg_module"})
    real = list(md.distributions())
    monkeypatch.setattr(plugins.md, "distributions", lambda: [fake, *real] if first else [*real, fake])
    with pytest.raises(HarnessError) as err:
        make_plugin_manager()
    message = str(err.value)
    assert "'gcg'" in message and "evil-gcg (evil_gcg_module)" in message and "harness (" in message
    assert "\n" not in message


def test_third_party_plugin_class_with_a_builtins_name_is_an_error_naming_both_packages(tmp_path, monkeypatch):
    from harness._engine import plugins
    from harness.errors import HarnessError

    (tmp_path / "clash_module.py").write_text(
        "from harness import MetricPlugin, hookimpl\n\n"
        "class Perplexity(MetricPlugin):\n    name = 'perplexity'\n\n"
        "@hookimpl\ndef harness_metrics():\n    return [Perplexity]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = _fake_distribution(tmp_path, "clash-pkg", {"clash": "clash_module"})
    real = list(md.distributions())
    monkeypatch.setattr(plugins.md, "distributions", lambda: [*real, fake])
    with pytest.raises(HarnessError, match="named 'perplexity'") as err:
        Registry(make_plugin_manager())
    assert "(harness)" in str(err.value) and "clash_module (clash-pkg)" in str(err.value)


def test_the_same_package_found_twice_is_no_conflict(monkeypatch):
    from harness._engine import plugins

    real = list(md.distributions())
    harness_dist = next(d for d in real if d.metadata["name"] == "harness")
    monkeypatch.setattr(plugins.md, "distributions", lambda: [*real, harness_dist])
    assert Registry(make_plugin_manager()).get("attack", "gcg").package == "harness"


def test_trainers_find_their_default_configs_as_package_data():
    """`harness train NAME` without --config reads the trainer plugin's own config, shipped beside its module (so an
    installed wheel has it: pyproject's package-data lists it), not a file of the source tree's top level."""
    import yaml
    from harness.cli.train import default_config

    import harness_plugins

    for name in ("baseline", "monotonic"):
        cls = load_registry().get("trainer", name).cls
        path = default_config(cls)
        assert path.is_file() and path.is_relative_to(Path(harness_plugins.__file__).resolve().parent)
        config = yaml.safe_load(path.read_text())
        assert "model" in config and "quick" in config  # the reserved key and the quick block
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"training/configs/*.yaml"' in pyproject
