"""``harness study``: a write-up rendered from runs' primary endpoints (no names in the code, every number the
run's), and each primary endpoint's sample, seed-to-seed spread and power as the report records them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness._engine.report import build_report
from harness.cli import main

from harness.attacks import example_record

from .test_primary_endpoints import N, SEEDS, _attack_records, make_run

PRIMARY = [{"model": "mono", "reference": "base", "entry": "atk", "metric": "mean_nll_increase", "min_effect": 0.1},
           {"model": "same", "reference": "base", "entry": "atk", "metric": "mean_nll_increase", "min_effect": 0.1},
           {"model": "wreck", "reference": "base", "entry": "atk", "metric": "mean_nll_increase", "min_effect": 0.1}]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """mono: 0.2 nats less increase than base (settled); same: the same increase on average, with noise of its own
    (SD 1 nat per example: not settled); wreck: perplexity far above the uniform guess (destroyed)."""
    attack = {"base": (2.0, 1.0), "mono": (2.0, 0.8), "wreck": (9.0, 3.0)}

    def records(model: str, seed: int) -> list[dict]:
        if model != "same":
            return _attack_records(*attack[model], seed)
        noise = np.random.default_rng([7, seed]).normal(0, 1.0, size=N)
        return [example_record(f"ex-{i}", 2.0, 3.0 + float(noise[i]), 0.15, queries=10) for i in range(N)]

    root = make_run(tmp_path_factory.mktemp("study") / "run", {"base": 0.0, "mono": 0.0, "same": 0.0, "wreck": 8.0},
                    {}, {"primary": PRIMARY, "tables": [{"name": "t1", "columns": [
                        {"label": "Perplexity", "entry": "ppl", "metric": "ppl", "digits": 2}]}]}, records=records)
    build_report(root)
    return root


def test_primary_endpoints_record_their_sample_spread_and_power(run):
    endpoints = {e["model"]: e for e in json.loads((run / "final_results.json").read_text())["primary"]["endpoints"]}
    sample = endpoints["same"]["sample"]
    assert (sample["status"], sample["seeds"], sample["documents"]) == ("estimated", len(SEEDS), N)
    # the per-seed mean paired difference, by hand from the same records
    per_seed = []
    for seed in SEEDS:
        noise = np.random.default_rng([7, seed]).normal(0, 1.0, size=N)
        base = [r["nll_increase"] for r in _attack_records(2.0, 1.0, seed)]
        per_seed.append(float(np.mean((1.0 + noise) - base)))
        assert sample["per_seed_difference"][str(seed)] == pytest.approx(per_seed[-1], abs=1e-9)
    assert sample["seed_sd"] == pytest.approx(float(np.std(per_seed, ddof=1)), abs=1e-9)
    # power at the family's strictest level (two judged endpoints: alpha / 2)
    assert sample["alpha"] == pytest.approx(0.025)
    assert 0.0 <= sample["current_power"] <= 1.0 and sample["needed"]["1"] >= 2
    assert endpoints["wreck"]["status"] == "destroyed" and "ci" not in endpoints["wreck"]
    # said where the answer is read: the summary's headline and the HTML report's
    said = f"not settled at N = {N} documents x {len(SEEDS)} seeds, power {sample['current_power']:.0%}"
    assert said in (run / "experiment_summary.txt").read_text() and said in (run / "report.html").read_text()


def test_study_renders_every_answer_from_the_runs(run, tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(f"""
title: Does the constraint resist the attack?
intro: A constructed study.
runs:
  made: {{dir: {run}, command: make it}}
  later: {{dir: {tmp_path / 'not-yet'}, command: harness run later.yaml --out not-yet}}
questions:
  - question: Does mono raise the NLL less than base?
    answers:
      - {{run: made, model: mono, reference: base}}
      - {{run: made, model: same, reference: base}}
      - {{run: made, model: wreck, reference: base}}
      - {{run: later, model: x, reference: y}}
    tables: [{{run: made, name: t1}}, {{run: made, name: nope}}, {{run: later, name: t1}}]
    note: The study's own prose.
output: out/answers.md
""")
    # a run script's log of timed invocations (one stopped and resumed; a torn last line is not read)
    (run / "invocations.jsonl").write_text(
        '{"seconds": 300, "exit_code": 3, "nproc": 2}\n{"seconds": 420, "exit_code": 0, "nproc": 2}\n{"seconds": 9')
    assert main(["study", str(study)]) == 0
    text = (tmp_path / "out" / "answers.md").read_text()
    assert "  - wall time: 12.0 min over 2 invocations of its run script (1 stopped before the end, resumed), " \
           "2 CPU cores" in text
    endpoints = {e["model"]: e for e in json.loads((run / "final_results.json").read_text())["primary"]["endpoints"]}
    mono = endpoints["mono"]
    assert (f"`made`: mono vs base, atk.mean_nll_increase: relative effect {mono['effect']:+.1%} "
            f"[{mono['ci'][0]:+.1%}, {mono['ci'][1]:+.1%}]") in text
    assert "-> **effect as hoped**" in text and "Holm-adjusted" in text
    same = endpoints["same"]
    assert same["status"] == "not settled"
    assert f"not settled at N = {N} documents x {len(SEEDS)} seeds, power {same['sample']['current_power']:.0%}" in text
    assert "`made`: wreck vs base, atk.mean_nll_increase: **no verdict** (destroyed" in text
    # an endpoint without a verdict still shows what was observed and on what sample, and the tally counts it
    wreck = endpoints["wreck"]
    assert f"observed {wreck['effect']:+.1%}, absolute {wreck['difference']:+.4g}, not judged" in text
    assert f"N = {N} documents x {len(SEEDS)} seeds, power {wreck['sample']['current_power']:.0%}" in text
    assert "Endpoints not settled: 1; without a verdict (destroyed, unmatched or missing): 1." in text
    assert "arms excluded from verdicts: wreck (destroyed" in text
    assert "`later`: no report at" in text and "harness run later.yaml --out not-yet" in text
    assert "`later`: x vs y: no run yet, no answer" in text and "The study's own prose." in text
    assert "gradient-masking warnings: 0" in text
    # the price of each arm: its perplexity as the report's arms check measured it, and its factor of the baseline's
    arms = {a["model"]: a for a in json.loads((run / "final_results.json").read_text())["arms"]["arms"]}
    ratio = arms["wreck"]["perplexity"] / arms["base"]["perplexity"]
    assert f"    - wreck: {arms['wreck']['perplexity']:.4g}, {ratio:.3g}x base (destroyed)" in text
    assert f"    - base: {arms['base']['perplexity']:.4g} (usable)" in text
    # a run's declared table, as its report wrote it; a table the run does not have, or a run not made, says so
    assert "`made`, table `t1`:" in text and (run / "t1.md").read_text().strip() in text
    assert "`made`: its report has no table `nope`" in text and "`later`: no run yet, no table `t1`" in text


def test_study_with_an_unknown_run_is_one_line_exit_2(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("title: t\nruns: {a: {dir: x}}\nquestions:\n  - question: q\n    answers: [{run: b, model: m, "
                     "reference: r}]\n")
    assert main(["study", str(study)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "questions[0].answers[0].run" in err and "unknown run 'b'" in err
