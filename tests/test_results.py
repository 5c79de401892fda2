"""harness.results, the public reader of runs: what it returns is what the report wrote, read by meaning (kinds,
entries, models), never by display strings; and a suite's resolved configs without a run."""

from __future__ import annotations

import json

import pytest

from harness import HarnessError, results
from tests.conftest import ROOT
from tests.test_report_verdicts import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("results") / "run",
                    {("strong", "base"): 30, ("strong", "mono"): 3, ("random_strong", "base"): 30,
                     ("random_strong", "mono"): 29},
                    controls={"random_strong": "strong"},
                    report={"tables": [{"name": "main", "title": "Main table",
                                        "columns": [{"label": "PPL", "entry": "ppl", "metric": "ppl"}]}]})
    return results.load(root)


def test_run_and_numbers_are_the_reports(run):
    final = json.loads((run.dir / "final_results.json").read_text())
    assert run.models == final["models"] == ["base", "mono"] and run.seeds == final["seeds"] and run.complete
    assert run.baseline == "base" and run.compare == ["mono"]
    group = next(g for g in final["results"] if g["entry"] == "strong" and g["model"] == "mono")
    assert run.metric("attacks", "strong", "mono", "success_rate") == group["across_seeds"]["success_rate"]
    per_seed = run.per_seed("attacks", "strong", "mono", "success_rate")
    assert per_seed and all(v == group["per_seed"][s]["metrics"]["success_rate"] for s, v in per_seed.items())
    assert run.metric("attacks", "nothing", "mono", "success_rate") is None and run.per_seed("x", "y", "z", "m") == {}
    stage = next(s["id"] for s in run.stages if s["entry"] == "strong" and s["model"] == "mono")
    assert len(run.records(stage)) == len([1 for _ in (run.dir / "stages" / stage / "records.jsonl").open()])


def test_comparisons_by_kind_model_and_entry(run):
    final = json.loads((run.dir / "final_results.json").read_text())
    strong = run.comparison("reduction", "mono", "strong")
    assert strong is not None and strong in final["indicators"] and strong["status"] == "met"
    gap = run.comparison("gap", "mono")
    assert gap is not None and gap["entry"] == "ppl" and gap["value"] == pytest.approx(0.05, abs=1e-9)
    assert {i["kind"] for i in run.comparisons()} == {"gap", "reduction"}
    # the same comparison on another metric, by the report's own code
    nll = run.comparison("reduction", "mono", "strong", attack_metric="mean_relative_increase")
    assert nll is not None and nll["metric"] == "mean_relative_increase" and nll["value"] != strong["value"]
    assert run.attack_entries == ["strong", "random_strong"] and run.controls == ["random_strong"]


def test_tables_by_their_names(run):
    table = run.table("main")
    assert table["title"] == "Main table" and [r["model"] for r in table["rows"]] == ["base", "mono"]
    assert run.table_file("main").read_text().startswith("| Model | PPL |")
    assert "\\label{tab:main}" in run.table_file("main", "tex").read_text()
    with pytest.raises(HarnessError, match="no table 'table7'.*main"):
        run.table("table7")


def test_load_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(HarnessError, match="not a run directory"):
        results.load(tmp_path)


def test_suite_configs_resolve_defaults_without_running():
    cfg = results.suite_configs(ROOT / "suites" / "quick.yaml")
    assert cfg["seeds"] == [42] and cfg["train"]["baseline"]["steps"] == 30
    assert cfg["attacks"]["hotflip"]["threshold"] == 0.15  # the built-in attacks' default, resolved
    assert set(cfg) >= {"models", "train", "metrics", "attacks"}
