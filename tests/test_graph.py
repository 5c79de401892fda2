"""The stage graph (harness/_engine/graph.py): `needs` at any depth (chains, diamonds, any listing order), cycles, training
chains, cache keys that cover every dependency, frozen stages; and a three-level chain run end to end and planned
for SLURM with the right `afterok` edges."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.errors import ConfigError, HarnessError
from harness._engine.graph import Graph, build_graph, entry_levels
from harness._engine.suite import load_suite
from tests.conftest import write_suite

PPL = "{{plugin: perplexity, {needs}data: {{dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: {n}}}}}"


def _metric(needs: list[str] | None = None, n: int = 2) -> str:
    return PPL.format(needs=f"needs: [{', '.join(needs)}], " if needs else "", n=n)


def _suite(tmp_path: Path, metrics: dict[str, str], models: str = "a: {plugin: pythia_tiny}\n  b: {plugin: pythia_tiny}",
           seeds: str = "[0]", extra: str = "", name: str = "suite.yaml") -> Path:
    body = "\n".join(f"  {k}: {v}" for k, v in metrics.items())
    return write_suite(tmp_path, f"name: g\nseeds: {seeds}\nmodels:\n  {models}\n{extra}metrics:\n{body}\n", name)


def _graph(path: Path) -> Graph:
    return build_graph(load_suite(path, output_dir=path.parent / "run"))


def _chain(tmp_path: Path, order: tuple[str, ...] = ("p1", "p2", "p3"), **kw: str) -> Graph:
    needs = {"p1": None, "p2": ["p1"], "p3": ["p2"]}
    return _graph(_suite(tmp_path, {e: _metric(needs[e]) for e in order}, **kw))


def _ids(graph: Graph, entry: str) -> set[str]:
    return {s.id for s in graph.stages if s.entry == entry}


def _assert_topological(graph: Graph) -> None:
    seen: set[str] = set()
    for stage in graph.stages:
        assert set(stage.deps) <= seen, f"{stage.id} comes before its dependencies {set(stage.deps) - seen}"
        seen.add(stage.id)


@pytest.mark.parametrize("order", [("p1", "p2", "p3"), ("p3", "p2", "p1"), ("p2", "p3", "p1")])
def test_chain_depends_on_every_models_stages_at_every_depth_in_any_listing_order(tmp_path, order):
    graph = _chain(tmp_path, order)
    by_id = graph.by_id()
    _assert_topological(graph)
    for model in ("a", "b"):
        assert set(by_id[f"metrics/p2/{model}"].deps) == _ids(graph, "p1")
        assert set(by_id[f"metrics/p3/{model}"].deps) == _ids(graph, "p2")
        assert by_id[f"metrics/p1/{model}"].deps == ()
    # Listing order does not change what a stage is.
    reference = {s.id: (s.key, set(s.deps)) for s in _chain(tmp_path, name="ref.yaml").stages}
    assert {s.id: (s.key, set(s.deps)) for s in graph.stages} == reference


def test_diamond_and_levels(tmp_path):
    path = _suite(tmp_path, {"d": _metric(["b", "c"]), "c": _metric(["a"]), "b": _metric(["a"]), "a": _metric(),
                             "e": _metric(["a", "d"])})
    suite = load_suite(path, output_dir=tmp_path / "run")
    assert [[e.name for e in level] for level in entry_levels(suite)] == [["a"], ["c", "b"], ["d"], ["e"]]
    graph = build_graph(suite)
    _assert_topological(graph)
    by_id = graph.by_id()
    assert set(by_id["metrics/d/a"].deps) == _ids(graph, "b") | _ids(graph, "c")
    assert set(by_id["metrics/e/b"].deps) == _ids(graph, "a") | _ids(graph, "d")
    assert len(graph.stages) == 10 and len(by_id) == 10


def test_listing_order_within_a_level_and_models_grouped(tmp_path):
    """The order shipped suites have always had: entries without needs first, grouped by model (each model loaded
    once per level), in listing order; then the next level the same way."""
    graph = _graph(_suite(tmp_path, {"x": _metric(["y"]), "y": _metric(), "z": _metric()}))
    assert [s.id for s in graph.stages] == ["metrics/y/a", "metrics/z/a", "metrics/y/b", "metrics/z/b",
                                            "metrics/x/a", "metrics/x/b"]


def test_cycles_are_one_line_errors(tmp_path):
    path = _suite(tmp_path, {"p": _metric(["r"]), "q": _metric(["p"]), "r": _metric(["q"])})
    with pytest.raises(ConfigError, match=r"needs.*cycle"):
        load_suite(path)
    # A suite built around load_suite's check (as a library user may) still gets a clear error, not a hang.
    suite = load_suite(_suite(tmp_path, {"p": _metric(), "q": _metric(["p"])}, name="ok.yaml"))
    suite.metrics["p"].needs = ["q"]
    with pytest.raises(HarnessError, match="cycle among metrics.p, metrics.q"):
        build_graph(suite)


def test_cache_keys_cover_every_dependency(tmp_path):
    base = _chain(tmp_path)
    keys = {s.id: s.key for s in base.stages}
    # p1 changed: p1, p2 and p3 change everywhere.
    changed = _graph(_suite(tmp_path, {"p1": _metric(n=3), "p2": _metric(["p1"]), "p3": _metric(["p2"])},
                            name="c1.yaml"))
    assert all(s.key != keys[s.id] for s in changed.stages)
    # p2 changed: p1 keeps its key (its result is reused), p2 and p3 change.
    changed = _graph(_suite(tmp_path, {"p1": _metric(), "p2": _metric(["p1"], n=3), "p3": _metric(["p2"])},
                            name="c2.yaml"))
    assert {s.id for s in changed.stages if s.key != keys[s.id]} == _ids(base, "p2") | _ids(base, "p3")
    # Only model b differs (its training): p3 on model a changes too, through p2 on model b.
    def trained(steps: int, name: str) -> Graph:
        return _graph(_suite(tmp_path, {"p1": _metric(), "p2": _metric(["p1"]), "p3": _metric(["p2"])},
                             models="a: {plugin: pythia_tiny}\n  b: {plugin: hf_causal_lm, from_train: t}",
                             extra=f"train:\n  t: {{plugin: baseline, model: a, steps: {steps}, "
                                   "data: {dataset: json, data_files: @DATA@/train.jsonl}}\n", name=name))
    one, two = trained(2, "t2.yaml"), trained(3, "t3.yaml")

    def key(graph: Graph, entry: str, model: str) -> str:
        return next(s.key for s in graph.stages if s.entry == entry and s.model == model)
    assert key(one, "p1", "a") == key(two, "p1", "a") and key(one, "p1", "b") != key(two, "p1", "b")
    assert key(one, "p3", "a") != key(two, "p3", "a")


def test_seeds_and_training_chains(tmp_path):
    train = ("train:\n"
             "  t1: {plugin: baseline, model: a, data: {dataset: json, data_files: @DATA@/train.jsonl}, steps: 2}\n"
             "  t2: {plugin: baseline, model: m1, data: {dataset: json, data_files: @DATA@/train.jsonl}, steps: 2}\n")
    models = "a: {plugin: pythia_tiny}\n  m2: {plugin: hf_causal_lm, from_train: t2}\n  m1: {plugin: hf_causal_lm, from_train: t1}"
    graph = _graph(_suite(tmp_path, {"p1": _metric(), "p2": _metric(["p1"]), "p3": _metric(["p2"])}, models=models,
                          seeds="[1, 2]", extra=train))
    _assert_topological(graph)
    by_id = graph.by_id()
    seeded = by_id["train/t1/s1"].seeded
    s1, s2 = ("/s1", "/s2") if seeded else ("", "")
    assert by_id[f"train/t2{s1}"].deps == (f"train/t1{s1}",)
    assert by_id[f"metrics/p1/m2{s1}"].deps == (f"train/t2{s1}",)
    if seeded:  # per seed: a stage waits for its own seed's stages (and the unseeded ones), not the other seed's
        deps = set(by_id["metrics/p3/m2/s2"].deps)
        assert deps == {"train/t2/s2", "metrics/p2/a", "metrics/p2/m1/s2", "metrics/p2/m2/s2"}
        assert by_id["train/t2/s1"].key != by_id["train/t2/s2"].key
    # The training upstream is part of every downstream key.
    assert graph.model_identity[("m2", 1)]["trained_by"] == by_id[f"train/t2{s1}"].key


def test_stages_are_frozen(tmp_path):
    stage = _chain(tmp_path).stages[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(stage, "key", "other")
    assert isinstance(stage.deps, tuple)


def test_three_level_chain_runs_and_its_slurm_dry_run_waits_for_every_input(tmp_path):
    from tests.test_slurm import EXAMPLE_PROFILE, _check_job_set, run_cli

    path = _suite(tmp_path, {"p3": _metric(["p2"]), "p2": _metric(["p1"]), "p1": _metric()})
    run_dir = tmp_path / "run"
    proc = run_cli("run", str(path), "--out", str(run_dir), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    graph = build_graph(load_suite(path, output_dir=run_dir))
    assert all(set(graph.by_id()[f"metrics/p3/{m}"].deps) == _ids(graph, "p2") for m in ("a", "b"))
    finished = {}
    for stage in graph.stages:
        sdir = run_dir / "stages" / stage.id
        marker = json.loads((sdir / "stage.json").read_text())
        assert marker["key"] == stage.key and marker["deps"] == list(stage.deps)
        finished[stage.id] = json.loads((sdir / "done.json").read_text())["finished"]
    for stage in graph.stages:
        assert all(finished[d] <= finished[stage.id] for d in stage.deps)
    # Run again: everything is cached (the keys the run wrote are the keys the graph builds).
    again = run_cli("run", str(path), "--out", str(run_dir), "--no-progress")
    assert again.returncode == 0 and all(finished[s.id] == json.loads(
        (run_dir / "stages" / s.id / "done.json").read_text())["finished"] for s in graph.stages)

    dry = tmp_path / "dry"
    proc = run_cli("slurm", "submit", str(path), "--dry-run", "--out", str(dry), "--profile", str(EXAMPLE_PROFILE))
    assert proc.returncode == 0, proc.stderr
    _check_job_set(dry, build_graph(load_suite(path, output_dir=dry)))


def test_an_option_added_at_its_old_behaviour_keeps_earlier_cache_keys():
    """``key_omits_defaults``: at its default the option is not in the key (a stage computed before the option existed
    is found again); set to anything else it is, and changes the key."""
    from typing import ClassVar

    from harness import PluginConfig
    from harness.digests import content_key

    class Before(PluginConfig):
        steps: int = 3

    class After(PluginConfig):
        steps: int = 3
        distill: float = 0.0
        key_omits_defaults: ClassVar[tuple[str, ...]] = ("distill",)

    class Listed(After):  # the same option without the declaration: an ordinary key member
        key_omits_defaults: ClassVar[tuple[str, ...]] = ()

    assert content_key(After()) == content_key(Before()) == {"steps": 3}
    assert content_key(After(distill=0.5)) == {"steps": 3, "distill": 0.5}
    assert content_key(Listed()) == {"steps": 3, "distill": 0.0}


def test_train_needs_wait_for_the_same_seed_and_enter_the_key(tmp_path):
    """A train entry's ``needs``: its stage at a seed waits for the needed training at that seed, and its key covers
    that training's (a changed arm retrains the control that reads it); a train stage without ``needs`` keeps the
    key it always had. Unknown names and cycles through ``needs`` are one-line errors."""
    recipe = "data: {dataset: json, data_files: @DATA@/train.jsonl}"

    def suite(arm_steps: int, control: str, name: str) -> Path:
        train = (f"train:\n  arm: {{plugin: baseline, model: a, {recipe}, steps: {arm_steps}}}\n"
                 f"  control: {{plugin: baseline, model: a, {recipe}, steps: 4{control}}}\n")
        return _suite(tmp_path, {"p": _metric()}, seeds="[1, 2]", extra=train, name=name,
                      models="a: {plugin: pythia_tiny}\n  c: {plugin: hf_causal_lm, from_train: control}")

    plain = _graph(suite(2, "", "plain.yaml"))
    needing = _graph(suite(2, ", needs: [arm]", "needs.yaml"))
    changed = _graph(suite(3, ", needs: [arm]", "changed.yaml"))
    _assert_topological(needing)
    ids = needing.by_id()
    assert ids["train/control/s2"].deps == ("train/arm/s2",) and plain.by_id()["train/control/s2"].deps == ()
    assert ids["train/control/s2"].key != plain.by_id()["train/control/s2"].key
    assert changed.by_id()["train/control/s2"].key != ids["train/control/s2"].key
    assert ids["metrics/p/c/s2"].key != changed.by_id()["metrics/p/c/s2"].key  # through the control's training
    assert plain.by_id()["train/arm/s1"].key == ids["train/arm/s1"].key

    with pytest.raises(ConfigError, match=r"train\.control\.needs.*unknown train entry 'amr'.*did you mean 'arm'"):
        load_suite(suite(2, ", needs: [amr]", "typo.yaml"))
    looped = suite(2, ", needs: [arm]", "loop.yaml")
    looped.write_text(looped.read_text().replace("steps: 2}", "steps: 2, needs: [control]}"))
    with pytest.raises(ConfigError, match=r"training cycle: (arm -> control -> arm|control -> arm -> control)"):
        load_suite(looped)
