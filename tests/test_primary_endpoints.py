"""The primary family (report.primary): Holm's step-down by hand, verdicts only for the declared endpoints with
absolute and relative effects side by side (and their disagreement said), every other interval labelled exploratory;
a destroyed arm and an unmatched control shown as such, with no verdict, on a constructed run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from harness import MetricSpec
from harness.attacks import ATTACK_METRICS, attack_summary, example_record
from harness._engine.report import build_report
from harness._engine.report.primary import _levels
from harness.store import atomic_write_json
from harness.summary import complete_summary

SEEDS = [1, 2, 3]
N = 40
PPL = [MetricSpec("ppl", "PPL", field="nll_sum", weight="tokens", aggregation="token_weighted_exp")]


def _ppl_records(shift: float) -> list[dict]:
    nll = np.random.default_rng(11).uniform(1.0, 6.0, size=N)
    return [{"id": f"doc-{i}", "tokens": 10, "nll_sum": float(10 * (v + shift))} for i, v in enumerate(nll)]


def _attack_records(before: float, increase: float, seed: int) -> list[dict]:
    """Every example: NLL ``before`` raised by about ``increase`` nats (noise keyed by example and seed)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.05, size=N)
    return [example_record(f"ex-{i}", before, before + increase + float(noise[i]), 0.15, queries=10)
            for i in range(N)]


def make_run(root: Path, ppl_shift: dict[str, float], attack: dict[str, tuple[float, float]], report: dict,
             vocab: int | None = 4096, seeds: list[int] = SEEDS,
             records: Callable[[str, int], list[dict]] | None = None) -> Path:
    """Models with a perplexity-like metric (``exp(mean token NLL + shift)``) and one attack ``atk`` whose
    records raise the NLL from ``before`` by ``increase`` nats (or are ``records(model, seed)``); each result
    records ``output_vocab_size``."""
    stages = []

    def add(section, entry, model, seed, metrics, records, specs):
        sid = f"{section}/{entry}/{model}/s{seed}"
        info = {"id": sid, "section": section, "entry": entry, "plugin": f"fake_{entry}", "model": model,
                "seed": seed, "deps": [], "key": f"k-{sid}"}
        stages.append(info)
        sdir = root / "stages" / sid
        sdir.mkdir(parents=True)
        (sdir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        result = {"stage": info, "config": {}, "metrics": metrics, "duration_s": 1.0, "output_vocab_size": vocab,
                  "declared_metrics": [s.as_dict() for s in specs]}
        atomic_write_json(sdir / "result.json", result)
        atomic_write_json(sdir / "done.json", {"key": info["key"]})

    for model, shift in ppl_shift.items():
        for seed in seeds:
            recs = _ppl_records(shift)
            value = float(np.exp(sum(r["nll_sum"] for r in recs) / sum(r["tokens"] for r in recs)))
            add("metrics", "ppl", model, seed, {"ppl": value}, recs, PPL)
            recs = records(model, seed) if records else _attack_records(*attack[model], seed)
            add("attacks", "atk", model, seed, complete_summary(ATTACK_METRICS, recs, attack_summary(recs, 0.15)), recs,
                ATTACK_METRICS)
    suite = {"name": "primary", "models": {m: {} for m in ppl_shift},
             "report": {"baseline": "base", "gap": {"entry": "ppl", "metric": "ppl"}, "attack_metric": "success_rate",
                        "gap_target": 0.15, "attack_reduction_target": 0.40, "bootstrap_samples": 4000, **report}}
    atomic_write_json(root / "config.resolved.json", {"mode": "quick", "suite": suite, "seeds": seeds,
                                                      "configs": {}, "stages": stages})
    return root


def test_holm_step_down_by_hand():
    # sorted p: 0.01 (level 0.05/3: rejected), 0.03 (level 0.05/2 = 0.025: not rejected), 0.04 (stopped: not)
    levels, rejected = _levels([0.01, 0.04, 0.03], 0.05, "holm")
    assert levels == pytest.approx([0.05 / 3, 0.05, 0.025]) and rejected == [True, False, False]
    levels, rejected = _levels([0.01, 0.02, 0.024], 0.05, "holm")
    assert rejected == [True, True, True]  # 0.01 <= 0.0167, 0.02 <= 0.025, 0.024 <= 0.05
    assert _levels([0.01, 0.04, 0.03], 0.05, "bonferroni") == ([0.05 / 3] * 3, [True, False, False])
    assert _levels([0.01, 0.04, 0.03], 0.05, "none") == ([0.05] * 3, [True, True, True])


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    """base; mono (0.2 nats less NLL increase, perplexity +3%); ctrl (its matched control, but perplexity x e:
    unmatched); wreck (perplexity e^8 times the base's: above the 4096-token uniform guess, destroyed)."""
    run = make_run(tmp_path_factory.mktemp("primary") / "run",
                   {"base": 0.0, "mono": 0.03, "ctrl": 1.0, "wreck": 8.0},
                   {"base": (2.0, 1.0), "mono": (2.0, 0.8), "ctrl": (2.0, 0.8), "wreck": (9.0, 3.0)},
                   {"compare": ["mono", "wreck"], "matched_controls": {"mono": ["ctrl"]},
                    "control_metrics": ["mean_nll_increase"],
                    "primary": [{"model": "mono", "reference": "base", "entry": "atk", "metric": "mean_nll_increase",
                                 "direction": "decrease", "min_effect": 0.1},
                                {"model": "wreck", "reference": "base", "entry": "atk",
                                 "metric": "mean_nll_increase", "direction": "decrease", "min_effect": 0.1},
                                {"model": "mono", "reference": "ctrl", "entry": "atk",
                                 "metric": "mean_nll_increase", "direction": "decrease", "min_effect": 0.1}]})
    return run, build_report(run).results


def test_destroyed_arm_and_unmatched_control_get_no_verdict(constructed):
    run, res = constructed
    arms = {a["model"]: a for a in res["arms"]["arms"]}
    assert arms["wreck"]["status"] == "destroyed" and arms["wreck"]["ceiling"] == 4096
    assert arms["wreck"]["ceiling_source"].startswith("uniform guess")  # from the recorded vocabulary size
    assert {arms[m]["status"] for m in ("base", "mono", "ctrl")} == {"usable"}
    (pair,) = res["arms"]["matched_pairs"]
    assert (pair["model"], pair["control"], pair["status"], pair["gap_status"]) == ("mono", "ctrl", "unmatched",
                                                                                     "model lower")
    endpoints = {(e["model"], e["reference"]): e for e in res["primary"]["endpoints"]}
    assert endpoints[("wreck", "base")]["status"] == "destroyed" and "ci" not in endpoints[("wreck", "base")]
    assert endpoints[("mono", "ctrl")]["status"] == "unmatched" and "ci" not in endpoints[("mono", "ctrl")]
    # the exploratory rows withhold theirs too
    wreck = [i for i in res["indicators"] if i.get("model") == "wreck" and i["indicator"] == "attack-success reduction"]
    assert wreck and all(i["status"] == "destroyed" and not i["met"] for i in wreck)
    versus = [r for r in res["versus_matched_controls"] if r["kind"] == "reduction"]
    assert versus and all(r["status"] == "unmatched" for r in versus)
    summary = (run / "experiment_summary.txt").read_text()
    assert "wreck: perplexity" in summary and "-> DESTROYED" in summary
    assert "mono vs matched control ctrl: UNMATCHED" in summary
    page = (run / "report.html").read_text()
    assert "<b>destroyed</b>" in page and "<b>unmatched</b>" in page


def test_primary_family_is_adjusted_and_alone_in_the_headline(constructed):
    run, res = constructed
    primary = res["primary"]
    assert primary["multiplicity"] == "holm" and primary["family_size"] == 1  # the other two get no verdict
    mono = next(e for e in primary["endpoints"] if (e["model"], e["reference"]) == ("mono", "base"))
    # 0.8 vs 1.0 nats on every example and seed: a 20% decrease, settled
    assert mono["effect"] == pytest.approx(-0.2, abs=0.01) and mono["difference"] == pytest.approx(-0.2, abs=0.01)
    assert mono["status"] == "effect as hoped" and mono["ci"][1] < 0 and mono["level"] == pytest.approx(0.05)
    assert mono["difference_ci"][1] < 0 and mono["ci_method"].startswith("paired t over seeds")
    scales = {s["metric"]: s for s in mono["scales"]}
    assert set(scales) == {"mean_relative_increase", "mean_log_ratio"}
    assert scales["mean_relative_increase"]["status"] == "effect as hoped" and "disagreement" not in mono
    # everything else is labelled exploratory, in final_results.json and the summary
    assert all(r["exploratory"] for r in res["indicators"] + res["attack_vs_control"] + res["versus_matched_controls"])
    summary = (run / "experiment_summary.txt").read_text()  # the short one: the answer first
    assert "Primary endpoints (Holm-adjusted family of 1" in summary and "-> EFFECT AS HOPED" in summary
    head, rest = (run / "summary_details.txt").read_text().split("Everything below is exploratory", 1)
    assert "Primary endpoints (Holm-adjusted family of 1" in head and "-> EFFECT AS HOPED" in head
    assert "Success indicators (computed from this run; exploratory)" in rest
    assert "Primary endpoints" in (run / "report.html").read_text()


def test_relative_and_absolute_verdicts_that_disagree_are_said(tmp_path):
    """A damaged arm with twice the clean NLL: +0.5 nats on NLL 4 is a 12.5% increase, the base's +0.4 on NLL 2 is
    20%: relatively the damaged arm is "more robust", absolutely it is less."""
    run = make_run(tmp_path / "run", {"base": 0.0, "dmg": 0.0}, {"base": (2.0, 0.4), "dmg": (4.0, 0.5)},
                   {"primary": [{"model": "dmg", "reference": "base", "entry": "atk", "metric": "mean_nll_increase",
                                 "direction": "decrease", "min_effect": 0.1}],
                    "matched_controls": {"dmg": ["base"]},
                    "control_metrics": ["mean_relative_increase", "mean_nll_increase"]})
    res = build_report(run).results
    (ep,) = res["primary"]["endpoints"]
    assert ep["status"] == "opposite effect"
    scales = {s["metric"]: s for s in ep["scales"]}
    assert scales["mean_relative_increase"]["status"] == "effect as hoped"
    assert "mean_relative_increase says effect as hoped" in ep["disagreement"]
    assert "the scales disagree" in (run / "experiment_summary.txt").read_text()
    # the exploratory comparisons on both scales get intervals and verdicts, and say that they disagree
    versus = {r["metric"]: r for r in res["versus_matched_controls"] if r["kind"] == "reduction"}
    assert versus["mean_relative_increase"]["status"] == "more robust than control"
    assert versus["mean_nll_increase"]["status"] == "less robust than control"
    assert "mean_nll_increase says less robust than control" in versus["mean_relative_increase"]["scales_disagree"]


def test_no_primary_declared_says_so(tmp_path):
    run = make_run(tmp_path / "run", {"base": 0.0, "mono": 0.0}, {"base": (2.0, 1.0), "mono": (2.0, 1.0)}, {})
    res = build_report(run).results
    assert res["primary"]["endpoints"] == [] and "no primary endpoint declared" in res["primary"]["note"]
    assert "Primary endpoints: none declared" in (run / "experiment_summary.txt").read_text()


def test_an_arm_not_matched_to_the_baseline_in_perplexity_gets_no_verdict_unless_the_total_effect_is_asked(tmp_path):
    """'hurt' pays 65% in perplexity (e^0.5, far above the 15% gap target; still far below a uniform guess) and its
    attack raises the NLL less: by default no verdict (the difference mixes its change with its damage); with
    `matched: false` the total effect is judged. 'mono' (+3%: the gap indicator met) keeps its verdict."""
    endpoint = {"reference": "base", "entry": "atk", "metric": "mean_nll_increase", "direction": "decrease",
                "min_effect": 0.1}
    run = make_run(tmp_path / "run", {"base": 0.0, "mono": 0.03, "hurt": 0.5},
                   {"base": (2.0, 1.0), "mono": (2.0, 0.8), "hurt": (2.0, 0.5)},
                   {"compare": ["mono", "hurt"],
                    "matched_controls": {"mono": ["hurt"]},
                    "primary": [{"model": "mono", **endpoint}, {"model": "hurt", **endpoint},
                                {"model": "hurt", **endpoint, "matched": False},
                                {"model": "mono", **endpoint, "reference": "hurt"},
                                {"model": "mono", **endpoint, "reference": "hurt", "matched": False}]})
    res = build_report(run).results
    mono, hurt, total, versus_control, versus_control_total = res["primary"]["endpoints"]
    assert mono["status"] == "effect as hoped"
    assert hurt["status"] == "unmatched" and "ci" not in hurt and "perplexity gap +64.9%" in hurt["detail"]
    assert total["status"] == "effect as hoped" and total["ci"][1] < 0
    # the same for a matched control not matched in perplexity: no verdict, unless the total effect is asked
    assert versus_control["status"] == "unmatched" and "ci" not in versus_control
    assert versus_control_total["status"] == "opposite effect" and versus_control_total["ci"][0] > 0
    pairs = {p["model"]: p for p in res["arms"]["baseline_pairs"]}
    assert pairs["mono"]["status"] == "matched" and pairs["hurt"]["status"] == "unmatched"
    summary = (run / "experiment_summary.txt").read_text()
    assert "hurt vs baseline base: UNMATCHED (perplexity gap +64.9%" in summary
    assert "mono vs baseline base: MATCHED" in summary
