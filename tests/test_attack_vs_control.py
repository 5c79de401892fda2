"""The report compares every attack with its random control on each model: the difference attack minus control,
its paired interval (same seeds and examples), and a status that only an interval wholly above 0 makes a win."""

from __future__ import annotations

import json

import numpy as np

from .conftest import run_cli, write_suite


def test_each_attack_is_compared_with_its_control_on_paired_examples(tmp_path):
    suite = write_suite(tmp_path, """
        name: vs_control
        seeds: [1, 2]
        models:
          tiny: {plugin: pythia_tiny}
        attacks:
          hotflip: &hf {data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}, n_examples: 6, flips: 2,
                        beam_width: 4, context_tokens: 16, continuation_tokens: 8}
          random_hotflip: {control_of: hotflip}
        report:
          attack_metric: success_rate
          control_metrics: [success_rate, mean_relative_increase]
    """)
    run = tmp_path / "run"
    proc = run_cli("run", str(suite), "--out", str(run), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    final = json.loads((run / "final_results.json").read_text())
    rows = {(r["attack"], r["metric"]): r for r in final["attack_vs_control"]}
    assert set(rows) == {("hotflip", "success_rate"), ("hotflip", "mean_relative_increase")}
    for metric, row in ((m, rows[("hotflip", m)]) for m in ("success_rate", "mean_relative_increase")):
        assert row["control"] == "random_hotflip" and row["model"] == "tiny"
        values = {}
        for entry in ("hotflip", "random_hotflip"):
            per_seed = []
            for seed in (1, 2):
                records = [json.loads(line) for line in
                           (run / "stages" / "attacks" / entry / "tiny" / f"s{seed}" / "records.jsonl").read_text()
                           .splitlines()]
                field = "success" if metric == "success_rate" else "relative_increase"
                per_seed.append(np.mean([float(r[field]) for r in records]))
            values[entry] = np.mean(per_seed)
        assert row["attack_value"] == np.float64(values["hotflip"]).item() or \
            abs(row["attack_value"] - values["hotflip"]) < 1e-12
        assert abs(row["difference"] - (values["hotflip"] - values["random_hotflip"])) < 1e-12
        lo, hi = row["ci95"]
        assert lo <= hi and "paired" in row["ci_method"]
        expected = "beats control" if lo > 0 else "below control" if hi < 0 else "not settled"
        assert row["status"] == expected
    summary = (run / "summary_details.txt").read_text()
    assert "hotflip vs random_hotflip on tiny, mean_relative_increase" in summary
    assert "Attacks against their controls" in (run / "report.html").read_text()


def test_control_verdict_needs_an_interval_strictly_on_one_side(monkeypatch):
    """Constructed: identical success rates of 1 (a degenerate [0, 0] interval) are not a loss to the control."""
    from harness._engine.report import verdicts

    class Across:
        def __init__(self, mean):
            self.mean = mean

    class Group:
        def __init__(self, mean):
            self.across = {"m": Across(mean)}

    class Config:
        control_metrics = ["m"]
        attack_metric = None
        confidence = 0.95

    class Run:
        config = Config()
        models = ["x"]

    class Agg:
        run = Run()

        def find(self, entry, model):
            return Group(1.0)

    cases = {(0.0, 0.0): "not settled", (0.1, 0.3): "beats control", (-0.3, -0.1): "below control",
             (-0.1, 0.2): "not settled", (0.0, 0.2): "not settled"}
    for (lo, hi), expected in cases.items():
        draws = np.array([[lo, hi] * 50, [0.0] * 100])
        monkeypatch.setattr(verdicts, "attack_entries", lambda agg: ["a"])
        monkeypatch.setattr(verdicts, "is_control", lambda run, entry: False)
        monkeypatch.setattr(verdicts, "control_of", lambda agg, entry: ("c", "named"))
        monkeypatch.setattr(verdicts, "paired_means", lambda agg, groups, metric, d=draws: (d, "paired bootstrap"))
        (row,) = verdicts.attack_vs_control(Agg())
        assert row["status"] == expected, (lo, hi, row)
