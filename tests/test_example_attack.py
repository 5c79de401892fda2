"""The out-of-tree example attack (examples/harness-example-attack): written from the README alone on the public
attack toolkit, installed with pip, and shown in every report output beside HotFlip with no change to the core."""

from __future__ import annotations

import json

import pytest

from .conftest import ROOT, pip_installed, run_cli, write_suite

EXAMPLE = ROOT / "examples" / "harness-example-attack"


@pytest.fixture()
def example_attack_installed():
    with pip_installed(EXAMPLE, "harness-example-attack"):
        yield


def test_example_attack_is_small_and_uses_only_the_public_api():
    source = (EXAMPLE / "harness_example_attack.py").read_text()
    assert len(source.splitlines()) <= 60
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    harness_imports = [line for line in imports if "harness" in line]
    assert harness_imports and all(line.startswith(("from harness import", "from harness.attacks import"))
                                   for line in harness_imports), harness_imports


def test_example_attack_runs_and_shows_in_every_report_output(tmp_path, example_attack_installed):
    listing = run_cli("list")
    assert "sweep" in listing.stdout and "harness-example-attack" in listing.stdout
    suite = write_suite(tmp_path, """
        name: example_attack
        models:
          tiny: {plugin: pythia_tiny}
        attacks:
          hotflip: {data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}, n_examples: 3, flips: 2,
                    beam_width: 4, context_tokens: 16, continuation_tokens: 8}
          sweep: {data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}, n_examples: 3, candidates: 4,
                  context_tokens: 16, continuation_tokens: 8}
        report:
          baseline: tiny
          tables:
            - name: table7
              columns:
                - {label: "HotFlip success (%)", entry: hotflip, metric: success_rate, scale: 100, digits: 1}
                - {label: "Sweep success (%)", entry: sweep, metric: success_rate, scale: 100, digits: 1}
    """)
    run = tmp_path / "run"
    proc = run_cli("run", str(suite), "--out", str(run), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    (stage,) = (run / "stages" / "attacks" / "sweep" / "tiny").iterdir()  # the one seed's stage
    result = json.loads((stage / "result.json").read_text())
    assert result["package"] == "harness-example-attack"
    records = [json.loads(line) for line in (stage / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["nll_after"] >= r["nll_before"] for r in records)
    # 1 base score + 16 positions x 4 candidates per example
    assert all(r["queries"] == 1 + 16 * 4 for r in records)
    final = json.loads((run / "final_results.json").read_text())
    side_by_side = {row["attack"]: row for row in final["attacks"]["rows"]}
    assert {"hotflip", "sweep"} <= set(side_by_side)
    sweep_cells = {c["metric"]: c for c in side_by_side["sweep"]["cells"]}
    assert sweep_cells["success_rate"]["status"] == "done"
    assert sweep_cells["mean_queries"]["mean"] == pytest.approx(1 + 16 * 4)
    assert not [w for w in final["warnings"] if "sweep" in w]  # every declared metric was reported
    assert "Sweep success (%)" in (run / "table7.md").read_text()
    summary = (run / "experiment_summary.txt").read_text()
    assert any(line.startswith("| sweep |") for line in summary.splitlines())
    assert "sweep" in (run / "report.html").read_text()
    for plot in ("attack_success_curve.png", "attack_budget.png", "relative_nll_increase.png"):
        assert final["plots"][plot]["path"], final["plots"][plot]
