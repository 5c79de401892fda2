"""Honest verdicts: paired bootstrap intervals (checked against hand computations on small constructed data), each
verdict rule on a constructed run, and the report's warnings about declared metrics."""

from __future__ import annotations

import html
import itertools
import json
import math
from pathlib import Path


import numpy as np
import pytest

from harness import MetricSpec
from harness.attacks import ATTACK_METRICS, attack_summary, example_record
from harness._engine.report import build_report
from harness._engine.report.stats import (ExampleStatistic, aligned_columns, bootstrap_examples, paired_bootstrap,
                                  paired_seed_bootstrap, percentile_interval, rng_for)
from harness._engine.report.verdicts import verdict
from harness.store import atomic_write_json
from harness.summary import complete_summary

MEAN = ExampleStatistic(("x",), lambda c: c["x"].mean(axis=-1))


# -- the paired bootstrap against hand computations -------------------------------------------------------------------

def test_paired_bootstrap_matches_the_exhaustive_resampling_distribution():
    """One seed, 4 examples: every one of the 4^4 equally likely resamples enumerated by hand gives the exact
    distribution of the paired difference of means; the bootstrap's replicates follow it."""
    model = np.array([1.0, 2.0, 4.0, 7.0])
    base = np.array([0.5, 2.5, 3.0, 5.0])
    exact = np.array([model[list(idx)].mean() - base[list(idx)].mean()
                      for idx in itertools.product(range(4), repeat=4)])
    reps = paired_bootstrap(MEAN, [[{"x": model}, {"x": base}]], 40_000, rng_for(0, "exhaustive"))
    diff = reps[0] - reps[1]
    assert reps.shape == (2, 40_000)
    # the same resample for both arms: every replicate difference is one of the hand-computed values
    assert np.isin(np.round(diff, 9), np.round(exact, 9)).all()
    assert diff.mean() == pytest.approx(exact.mean(), abs=0.01) and diff.std() == pytest.approx(exact.std(), rel=0.02)
    for q in (0.025, 0.25, 0.5, 0.75, 0.975):
        assert np.quantile(diff, q) == pytest.approx(np.quantile(exact, q), abs=0.13)  # steps of 1/4 apart


def test_pairing_removes_the_noise_the_arms_share():
    """Model = baseline + 0.1 on every example: paired, the difference is exactly 0.1 in every replicate; resampled
    independently (the old, unpaired way) the interval is wide."""
    base = np.random.default_rng(3).normal(5.0, 2.0, size=30)
    model = base + 0.1
    reps = paired_bootstrap(MEAN, [[{"x": model}, {"x": base}]], 2000, rng_for(0, "pair"))
    assert np.allclose(reps[0] - reps[1], 0.1)
    unpaired = (bootstrap_examples(MEAN, {"x": model}, 2000, rng_for(0, "a"))
                - bootstrap_examples(MEAN, {"x": base}, 2000, rng_for(0, "b")))
    lo, hi = percentile_interval(unpaired, 0.95)
    assert lo < 0 < hi  # unpaired, the same data cannot even tell the sign


def test_paired_intervals_over_seeds_by_hand():
    """Three seeds: model 1, 3, 2 and baseline 2, 2, 2 (every example equal within a seed). The replicates are the
    t-interval's: the baseline has no spread (always 2), the model's 95% interval is 2 +- t(0.975, 2) * 1 / sqrt(3),
    and a difference of arms gets the t-interval of the per-seed differences."""
    seeds = [[{"x": np.full(5, v)}, {"x": np.full(5, 2.0)}] for v in (1.0, 3.0, 2.0)]
    reps = paired_bootstrap(MEAN, seeds, 40_000, rng_for(0, "seeds"))
    assert np.allclose(reps[1], 2.0)
    half = 4.302653 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(3), sd = 1
    lo, hi = percentile_interval(reps[0], 0.95)
    assert lo == pytest.approx(2 - half, abs=0.1) and hi == pytest.approx(2 + half, abs=0.1)  # Monte Carlo
    # values only (no records): the same, paired
    by_seed = paired_seed_bootstrap(np.array([[1.0, 2.0], [3.0, 2.5], [2.0, 1.5]]), 40_000, rng_for(0, "v"))
    diff = np.array([-1.0, 0.5, 0.5])  # per-seed differences: mean 0, sd sqrt(0.75)
    lo, hi = percentile_interval(by_seed[0] - by_seed[1], 0.95)
    half = 4.302653 * diff.std(ddof=1) / math.sqrt(3)
    assert lo == pytest.approx(-half, abs=0.1) and hi == pytest.approx(half, abs=0.1)


def test_records_are_paired_by_id():
    a = [{"id": "e1", "x": 1.0}, {"id": "e2", "x": 2.0}, {"id": "e3", "x": 3.0}]
    b = [{"id": "e3", "x": 30.0}, {"id": "e1", "x": 10.0}]
    cols = aligned_columns(MEAN, [a, b])
    assert cols is not None and cols[0]["x"].tolist() == [1.0, 3.0] and cols[1]["x"].tolist() == [10.0, 30.0]
    assert aligned_columns(MEAN, [a, [{"x": 1.0}]]) is None  # no ids: nothing to pair


def test_verdict_rules():
    assert verdict([0.45, 0.6], 0.40, above=True) == "met"
    assert verdict([0.10, 0.40], 0.40, above=True) == "not met"
    assert verdict([0.30, 0.50], 0.40, above=True) == "not settled"
    assert verdict(None, 0.40, above=True) == "not settled"
    assert verdict([0.01, 0.14], 0.15, above=False) == "met"
    assert verdict([0.15, 0.30], 0.15, above=False) == "not met"
    assert verdict([0.10, 0.20], 0.15, above=False) == "not settled"


# -- each verdict on a constructed run --------------------------------------------------------------------------------

SEEDS = [1, 2]
N = 40
PPL_SPECS = [MetricSpec("ppl", "PPL", field="nll_sum", weight="tokens", aggregation="token_weighted_exp")]


def _attack_records(successes: int, seed: int) -> list[dict]:
    """``successes`` of N examples raise the NLL by 20% or 40% (alternately; a success at threshold 0.15), the rest
    by 1%."""
    return [example_record(f"ex-{i}", 2.0, 2.0 * ((1.2, 1.4)[i % 2] if i < successes else 1.01), 0.15, queries=10)
            for i in range(N)]


def _ppl_records(ratio: float) -> list[dict]:
    """Per-document NLL sums of 10 tokens; ``ratio``: the perplexity ratio to the base on every document."""
    nll = np.random.default_rng(11).uniform(0.5, 8.0, size=N)  # documents of very different difficulty
    return [{"id": f"doc-{i}", "tokens": 10, "nll_sum": float(10 * (v + np.log(ratio)))} for i, v in enumerate(nll)]


def make_run(root: Path, successes: dict[tuple[str, str], int], controls: dict[str, str], report: dict,
             drop: dict[str, str] | None = None, extra: dict[str, dict] | None = None,
             ppl_scales: dict[str, float] | None = None) -> Path:
    """Models base and mono, two seeds; attack entries with ``successes[(entry, model)]`` of N; a perplexity-like
    metric (mono 5% above base on every document). Results record their declarations (the plugins are not
    installed). ``drop``: entry -> a declared key removed from its results; ``extra``: entry -> undeclared keys."""
    stages = []

    def add(section, entry, plugin, model, seed, metrics, records, specs, control=None):
        sid = f"{section}/{entry}/{model}/s{seed}"
        info = {"id": sid, "section": section, "entry": entry, "plugin": plugin, "model": model, "seed": seed,
                "deps": [], "key": f"k-{sid}"}
        stages.append(info)
        sdir = root / "stages" / sid
        sdir.mkdir(parents=True)
        (sdir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        result = {"stage": info, "config": {}, "metrics": metrics, "duration_s": 1.0,
                  "declared_metrics": [s.as_dict() for s in specs]}
        if control is not None:
            result["control"] = control
        atomic_write_json(sdir / "result.json", result)
        atomic_write_json(sdir / "done.json", {"key": info["key"]})

    scales = ppl_scales or {"base": 1.0, "mono": 1.05}
    for model, scale in scales.items():
        for seed in SEEDS:
            recs = _ppl_records(scale)
            nll, tok = sum(r["nll_sum"] for r in recs), sum(r["tokens"] for r in recs)
            add("metrics", "ppl", "fake_ppl", model, seed, {"ppl": float(np.exp(nll / tok))}, recs, PPL_SPECS)
    for (entry, model), k in successes.items():
        for seed in SEEDS:
            recs = _attack_records(k, seed)
            metrics = complete_summary(ATTACK_METRICS, recs, attack_summary(recs, 0.15))
            if drop and entry in drop:
                del metrics[drop[entry]]
            metrics.update((extra or {}).get(entry, {}))
            add("attacks", entry, "fake_attack", model, seed, metrics, recs, ATTACK_METRICS,
                control=entry in controls)
    suite = {"name": "verdicts", "models": {model: {} for model in scales},
             "attacks": {control: {"control_of": attack} for control, attack in controls.items()},
             "report": {"baseline": "base", "compare": ["mono"], "gap": {"entry": "ppl", "metric": "ppl"},
                        "attack_metric": "success_rate", "bootstrap_samples": 1000, "gap_target": 0.15,
                        "attack_reduction_target": 0.40, "curve_thresholds": [0.15, 0.30], **report}}
    atomic_write_json(root / "config.resolved.json", {"mode": "quick", "suite": suite, "seeds": SEEDS,
                                                      "configs": {}, "stages": stages})
    return root


def _indicators(results: dict) -> dict:
    return {(i["indicator"], i.get("entry")): i for i in results["indicators"]}


def test_without_targets_the_report_gives_values_and_intervals_but_no_verdict(tmp_path):
    """The core has no default target: a suite that sets none gets its comparisons measured, not judged."""
    run = make_run(tmp_path / "run", {("strong", "base"): 30, ("strong", "mono"): 3}, controls={},
                   report={"gap_target": None, "attack_reduction_target": None})
    res = build_report(run).results
    assert res["report_config"]["gap_target"] is None and res["report_config"]["attack_reduction_target"] is None
    for item in res["indicators"]:
        assert item["status"] == "no target" and not item["met"], item
        assert item["ci95"] is not None and "value" in item
    assert verdict([0.5, 0.9], None, above=True) == "no target"


def test_each_verdict_rule_on_a_constructed_run(tmp_path):
    successes = {
        ("strong", "base"): 30, ("strong", "mono"): 3,          # 90% fewer successes ...
        ("random_strong", "base"): 30, ("random_strong", "mono"): 29,  # ... while its control barely moves: met
        ("weak", "base"): 30, ("weak", "mono"): 28,              # 7% fewer: not met
        ("mid", "base"): 20, ("mid", "mono"): 12,                # 40% fewer on 80 paired examples: not settled
        ("rare", "base"): 3, ("rare", "mono"): 0,                # the baseline succeeds on 7.5%: too few successes
        ("damaged", "base"): 30, ("damaged", "mono"): 3,         # as strong as `strong` ...
        ("noise", "base"): 30, ("noise", "mono"): 4,             # ... but so is its control: same as control
    }
    run = make_run(tmp_path / "run", successes, controls={"random_strong": "strong", "noise": "damaged"}, report={})
    res = build_report(run).results
    ind = _indicators(res)
    strong = ind[("attack-success reduction", "strong")]
    assert strong["status"] == "met" and strong["met"] and strong["ci95"][0] > 0.40
    assert strong["control_entry"] == "random_strong" and strong["minus_control_ci95"][0] > 0  # its control_of
    assert strong["ci_method"] == "paired t over seeds, plus the examples the seeds share"
    assert ind[("attack-success reduction", "weak")]["status"] == "not met"
    mid = ind[("attack-success reduction", "mid")]
    assert mid["ci95"][0] < 0.40 < mid["ci95"][1] and mid["status"] == "not settled" and not mid["met"]
    rare = ind[("attack-success reduction", "rare")]
    assert rare["status"] == "too few successes" and rare["baseline_value"] == pytest.approx(3 / N)
    damaged = ind[("attack-success reduction", "damaged")]
    assert damaged["ci95"][0] > 0.40 and damaged["control_entry"] == "noise"  # control_of, not a name
    assert damaged["status"] == "same as control" and damaged["minus_control_ci95"][0] <= 0
    assert ind[("attack-success reduction", "noise")]["status"] == "control"
    # The gap: mono is 5% above base on every document; paired, the interval is tight around 5% (met), although
    # the documents differ so much that an unpaired interval would straddle the 15% target.
    gap = ind[("ppl gap vs baseline", "ppl")]
    assert gap["value"] == pytest.approx(0.05) and gap["status"] == "met"
    assert gap["ci95"] == pytest.approx([0.05, 0.05], abs=1e-9)
    stat = ExampleStatistic(("nll_sum", "tokens"), lambda c: np.exp(c["nll_sum"].sum(-1) / c["tokens"].sum(-1)))
    cols = [{f: np.array([r[f] for r in _ppl_records(k)], dtype=float) for f in stat.fields} for k in (1.05, 1.0)]
    unpaired = (bootstrap_examples(stat, cols[0], 1000, rng_for(0, "m"))
                / bootstrap_examples(stat, cols[1], 1000, rng_for(0, "b")) - 1)
    lo, hi = percentile_interval(unpaired, 0.95)
    assert lo < 0.15 < hi
    # Shown so: the summary and the HTML say each status; only `met` is green.
    summary = (run / "summary_details.txt").read_text()
    for status in ("MET", "NOT MET", "NOT SETTLED", "TOO FEW SUCCESSES", "SAME AS CONTROL"):
        assert f"-> {status}" in summary
    page = (run / "report.html").read_text()
    assert page.count('<tr class="met">') == 2 and '<tr class="unsettled">' in page
    # Success at more than one threshold in the side-by-side table (15% from the records, 30% likewise).
    labels = [c["label"] for c in res["attacks"]["columns"]]
    assert "Success > 15% (%)" in labels and "Success > 30% (%)" in labels
    row = next(r for r in res["attacks"]["rows"] if r["attack"] == "strong" and r["model"] == "base")
    at15 = row["cells"][labels.index("Success > 15% (%)")]
    assert at15["mean"] == pytest.approx(100 * 30 / N)
    assert row["cells"][labels.index("Success > 30% (%)")]["mean"] == pytest.approx(100 * 15 / N)  # the 40% ones


def test_each_model_is_judged_against_its_matched_controls(tmp_path):
    """mono (5% above base in perplexity) against ctrl (damaged alike: the same perplexity), ctrl_near (7% above:
    a difference the interval shows, inside the 15% margin) and ctrl_far (50% above): the perplexity ratio says
    which control is matched (its interval within +-gap_target, whether or not it excludes 0); each attack's
    reduction against a control is judged on its paired interval."""
    successes = {("strong", "base"): 30, ("strong", "mono"): 3, ("strong", "ctrl"): 30, ("strong", "ctrl_far"): 30,
                 ("close", "base"): 30, ("close", "mono"): 3, ("close", "ctrl"): 4, ("close", "ctrl_far"): 4,
                 ("worse", "base"): 30, ("worse", "mono"): 20, ("worse", "ctrl"): 5, ("worse", "ctrl_far"): 5,
                 ("strong", "ctrl_near"): 30, ("close", "ctrl_near"): 4, ("worse", "ctrl_near"): 5}
    run = make_run(tmp_path / "run", successes, controls={},
                   report={"matched_controls": {"mono": ["ctrl", "ctrl_near", "ctrl_far"]}, "compare": ["mono"]},
                   ppl_scales={"base": 1.0, "mono": 1.05, "ctrl": 1.05, "ctrl_near": 1.05 * 1.07,
                               "ctrl_far": 1.05 * 1.5})
    res = build_report(run).results
    rows = {(r["control_model"], r["entry"], r["metric"]): r for r in res["versus_matched_controls"]}
    assert len(rows) == 3 * (1 + 3)  # per control: the gap metric, then the three attacks in success_rate
    matched, near, far = (rows[(c, "ppl", "ppl")] for c in ("ctrl", "ctrl_near", "ctrl_far"))
    assert matched["kind"] == "gap" and matched["value"] == pytest.approx(0.0, abs=1e-12)
    assert matched["status"] == "matched" and matched["ci95"] == pytest.approx([0.0, 0.0], abs=1e-9)
    # an equivalence margin: the interval excludes 0 but lies within +-15%, so the pair is matched
    assert near["value"] == pytest.approx(1 / 1.07 - 1) and near["ci95"][1] < 0 and near["status"] == "matched"
    assert far["value"] == pytest.approx(1 / 1.5 - 1) and far["status"] == "model lower"
    strong = rows[("ctrl", "strong", "success_rate")]
    assert strong["value"] == pytest.approx(0.9) and strong["status"] == "more robust than control"
    assert strong["ci95"][0] > 0 and strong["ci_method"] == "paired t over seeds, plus the examples the seeds share"
    close = rows[("ctrl", "close", "success_rate")]
    assert close["value"] == pytest.approx(0.25) and close["status"] == "not settled"
    assert close["ci95"][0] <= 0 < close["ci95"][1]  # mono's successes are a subset of ctrl's: it touches 0
    worse = rows[("ctrl", "worse", "success_rate")]
    assert worse["status"] == "less robust than control" and worse["ci95"][1] < 0
    summary = (run / "summary_details.txt").read_text()
    assert "mono vs ctrl, strong.success_rate: 0.075 vs 0.75, reduction 90.0%" in summary
    assert "-> MORE ROBUST THAN CONTROL" in summary and "-> MATCHED" in summary
    assert "Models against their matched controls" in (run / "report.html").read_text()


def test_matched_controls_must_name_models(tmp_path):
    from harness import ConfigError
    from harness._engine.suite import load_suite

    path = tmp_path / "suite.yaml"
    path.write_text("name: m\nseeds: [1]\nmodels:\n  a: {plugin: pythia_tiny}\n  b: {plugin: pythia_tiny}\n"
                    "report: {baseline: a, compare: [b], matched_controls: {b: [c]}}\n")
    with pytest.raises(ConfigError, match="matched_controls.b") as err:
        load_suite(path)
    assert len(str(err.value).strip().splitlines()) == 1


def test_missing_and_undeclared_metrics_are_reported_in_one_line(tmp_path):
    run = make_run(tmp_path / "run", {("atk", "base"): 20, ("atk", "mono"): 10}, {}, {},
                   drop={"atk": "median_relative_increase"}, extra={"atk": {"mystery_score": 1.0}})
    res = build_report(run).results
    warning = [w for w in res["warnings"] if "median_relative_increase" in w]
    assert len(warning) == 1 and "plugin 'fake_attack'" in warning[0] and "\n" not in warning[0]
    assert any("mystery_score" in n and "fake_attack" in n for n in res["notes"])
    summary = (run / "summary_details.txt").read_text()
    assert f"WARNING: {warning[0]}" in summary and html.escape(warning[0]) in (run / "report.html").read_text()
    # the declared column stays, with "no value" (not the mark of a stage that did not finish)
    row = next(r for r in res["attacks"]["rows"] if r["model"] == "mono")
    labels = [c["label"] for c in res["attacks"]["columns"]]
    assert row["cells"][labels.index("Median NLL incr. (%)")]["status"] == "no value"


def test_declared_families_are_alternatives(tmp_path):
    """lm-eval names a metric `task/metric`, or `task/metric,filter` when a task has several filters: a result
    with either form lacks nothing; one with neither gets one line naming the families."""
    from harness._engine.report.collect import StageData
    from harness._engine.report.declared import missing_declared, undeclared
    from harness_plugins.metrics.lmeval import LMEval, LMEvalConfig

    specs = LMEval(LMEvalConfig(tasks=["t1"])).declared_metrics()

    def stage(metrics: dict) -> StageData:
        return StageData(id="s", section="metrics", entry="e", plugin="lm_eval", model="m", seed=None, key="k",
                         deps=[], dir=tmp_path, status="done", result={"metrics": metrics})

    assert missing_declared(specs, stage({"t1/acc": 0.5, "t1/acc_stderr": 0.1})) == []
    assert missing_declared(specs, stage({"t1/em,strict": 0.5, "t1/em,strict_stderr": 0.1})) == []
    lacking = missing_declared(specs, stage({"score": 1.0}))
    assert len(lacking) == 1 and "{task}/{metric}" in lacking[0]
    assert undeclared(specs, stage({"score": 1.0, "t1/acc": 0.5})) == ["score"]
