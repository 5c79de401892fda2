"""The out-of-tree example attack (examples/harness-example-attack): written from the README alone on the public
attack toolkit, installed with pip, and shown in every report output beside HotFlip with no change to the core."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT, run_cli, write_suite

EXAMPLE = ROOT / "examples" / "harness-example-attack"


@pytest.fixture()
def example_attack_installed():
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(EXAMPLE)], check=True,
                   capture_output=True, timeout=300)
    yield
    subprocess.run([*pip, "uninstall", "-y", "harness-example-attack"], check=True, capture_output=True, timeout=300)


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
          table7:
            - {label: "HotFlip success (%)", entry: hotflip, metric: success_rate, scale: 100, digits: 1}
            - {label: "Sweep success (%)", entry: sweep, metric: success_rate, scale: 100, digits: 1}
    """)
    run = tmp_path / "run"
    proc = run_cli("run", str(suite), "--out", str(run), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "stages" / "attacks" / "sweep" / "tiny" / "result.json").read_text())
    assert result["package"] == "harness-example-attack"
    records = [json.loads(line) for line in (run / "stages" / "attacks" / "sweep" / "tiny" / "records.jsonl")
               .read_text().splitlines()]
    assert len(records) == 3 and all(r["nll_after"] >= r["nll_before"] for r in records)
    # 1 base score + 16 positions x 4 candidates per example
    assert all(r["queries"] == 1 + 16 * 4 for r in records)
    final = json.loads((run / "final_results.json").read_text())
    side_by_side = {row["entry"] for row in final["attacks"]["rows"]}
    assert {"hotflip", "sweep"} <= side_by_side
    assert "Sweep success (%)" in (run / "table7.md").read_text()
    assert "sweep" in (run / "experiment_summary.txt").read_text()
    assert "sweep" in (run / "report.html").read_text()
    assert any("sweep" in str(info) for info in final["plots"].values() if info.get("path")) or \
        "sweep" in json.dumps(final["plots"])
