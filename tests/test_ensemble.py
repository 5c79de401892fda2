"""The per-example worst case over several attacks (``report.ensembles``), on a constructed run: each example keeps
the record of the member that raised its NLL most, budgets add up, only shared examples count, the ensemble is an
attack entry like any other (tables, its control, a primary endpoint), and one whose member did not finish is
missing, never computed from part of its members."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from harness.attacks import ATTACK_METRICS, attack_summary, example_record
from harness._engine.report import build_report
from harness.store import atomic_write_json
from harness.summary import complete_summary

SEEDS = [1, 2, 3, 4, 5]
THRESHOLD = 0.15


def _records(entry: str, model: str, seed: int, n: int, scale: float, queries: int) -> list[dict]:
    """Examples ``ex-0 .. ex-{n-1}`` with NLL 2.0 raised by a random amount (keyed by entry, model and seed)."""
    rng = np.random.default_rng([zlib.crc32(f"{entry}/{model}".encode()), seed])
    return [example_record(f"ex-{i}", 2.0, 2.0 + scale * float(rng.uniform(0, 1)), THRESHOLD, queries=queries)
            for i in range(n)]


#: entry -> (examples, NLL-increase scale, queries per example); ``b`` runs on the first 12 of ``a``'s 20.
ATTACKS = {"a": (20, 1.0, 10), "b": (12, 1.2, 30), "rand_a": (20, 0.5, 10), "rand_b": (12, 0.5, 30)}
#: The robust model's attacks raise the NLL by this factor of the base model's.
DAMPING = {"base": 1.0, "robust": 0.4}


def make_run(root: Path, report: dict, skip: set[str] = frozenset()) -> Path:
    stages = []
    for model, damping in DAMPING.items():
        for entry, (n, scale, queries) in ATTACKS.items():
            for seed in SEEDS:
                sid = f"attacks/{entry}/{model}/s{seed}"
                info = {"id": sid, "section": "attacks", "entry": entry, "plugin": f"fake_{entry}", "model": model,
                        "seed": seed, "deps": [], "key": f"k-{sid}"}
                stages.append(info)
                if sid in skip:
                    continue
                sdir = root / "stages" / sid
                sdir.mkdir(parents=True)
                recs = _records(entry, model, seed, n, scale * damping, queries)
                (sdir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
                metrics = complete_summary(ATTACK_METRICS, recs, attack_summary(recs, THRESHOLD))
                atomic_write_json(sdir / "result.json", {"stage": info, "config": {}, "metrics": metrics,
                                                         "duration_s": 1.0,
                                                         "declared_metrics": [s.as_dict() for s in ATTACK_METRICS]})
                atomic_write_json(sdir / "done.json", {"key": info["key"]})
    suite = {"name": "ensemble", "models": {m: {} for m in DAMPING},
             "attacks": {"rand_a": {"control_of": "a"}, "rand_b": {"control_of": "b"}},
             "report": {"baseline": "base", "attack_metric": "success_rate", "bootstrap_samples": 500,
                        "control_metrics": ["mean_nll_increase"],
                        "ensembles": [{"name": "worst", "entries": ["a", "b"]},
                                      {"name": "worst_random", "entries": ["rand_a", "rand_b"],
                                       "control_of": "worst"}], **report}}
    atomic_write_json(root / "config.resolved.json", {"mode": "quick", "suite": suite, "seeds": SEEDS,
                                                      "configs": {}, "stages": stages})
    return root


def _group(results: dict, entry: str, model: str) -> dict:
    return next(g for g in results["results"] if g["entry"] == entry and g["model"] == model)


def test_worst_case_per_example_on_shared_examples(tmp_path):
    report = build_report(make_run(tmp_path, {}))
    for model, seed in [(m, s) for m in DAMPING for s in SEEDS]:
        a = {r["id"]: r for r in _records("a", model, seed, 20, DAMPING[model], 10)}
        b = {r["id"]: r for r in _records("b", model, seed, 12, 1.2 * DAMPING[model], 30)}
        shared = list(b)  # b's 12 examples are the first 12 of a's
        worst = [max(a[i]["nll_increase"], b[i]["nll_increase"]) for i in shared]
        per_seed = _group(report.results, "worst", model)["per_seed"][str(seed)]
        assert per_seed["status"] == "done"
        got = per_seed["metrics"]
        assert got["mean_nll_increase"] == pytest.approx(float(np.mean(worst)), rel=1e-12)
        assert got["success_rate"] == pytest.approx(float(np.mean([w / 2.0 > THRESHOLD for w in worst])))
        assert got["mean_queries"] == pytest.approx(40.0)  # both ran on every shared example: 10 + 30
        # never below either member on the same examples, and above the weaker one somewhere
        assert got["mean_nll_increase"] >= np.mean([b[i]["nll_increase"] for i in shared])
        assert got["mean_nll_increase"] >= np.mean([a[i]["nll_increase"] for i in shared])
        # a's run covers 8 examples b did not, so a summary value the records do not give (the members' example
        # count, their threshold) is not carried over: it might describe other examples
        assert "n_examples" not in got and "threshold" not in got
        assert got["mean_relative_increase"] == pytest.approx(
            float(np.mean(worst)) / 2.0)
    stage = next(s for s in report.results["stages"] if s["id"] == "attacks/worst/base/1")
    assert stage["deps"] == ["attacks/a/base/s1", "attacks/b/base/s1"] and stage["status"] == "done"


def test_ensemble_is_an_attack_with_its_control_and_a_primary_endpoint(tmp_path):
    primary = [{"model": "robust", "reference": "base", "entry": "worst", "metric": "mean_nll_increase",
                "min_effect": 0.10}]
    results = build_report(make_run(tmp_path, {"primary": primary})).results
    assert {("worst", "base"), ("worst", "robust"), ("worst_random", "base")} <= {
        (r["attack"], r["model"]) for r in results["attacks"]["rows"]}
    assert next(r for r in results["attacks"]["rows"] if r["attack"] == "worst_random")["control"]
    row = next(r for r in results["attack_vs_control"] if r["attack"] == "worst" and r["model"] == "base")
    assert row["control"] == "worst_random" and row["status"] == "beats control"
    endpoint = results["primary"]["endpoints"][0]
    assert endpoint["entry"] == "worst" and endpoint["status"] == "effect as hoped"  # 0.4x the increase
    # the members are checked for gradient masking, not the ensemble derived from them
    assert not any(m["attack"].startswith("worst") for m in results["masking_checks"])
    assert results["complete"]


def test_unfinished_member_leaves_the_ensemble_missing(tmp_path):
    results = build_report(make_run(tmp_path, {}, skip={"attacks/b/robust/s2"})).results
    per_seed = _group(results, "worst", "robust")["per_seed"]
    assert per_seed["1"]["status"] == "done"
    assert per_seed["2"]["status"] == "waiting for attacks/b/robust/s2"
    assert {"id": "attacks/worst/robust/2", "status": "waiting for attacks/b/robust/s2"} in results["missing"]
    assert not results["complete"]


def test_members_that_attack_another_task_on_a_document_make_no_ensemble(tmp_path):
    root = make_run(tmp_path, {})
    path = root / "stages" / "attacks" / "b" / "robust" / "s1" / "records.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[3]["nll_before"] += 0.5  # another context or continuation of ex-3: another clean NLL
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    per_seed = _group(build_report(root).results, "worst", "robust")["per_seed"]
    assert per_seed["1"]["status"] == ("the members' records of example ex-3 differ in nll_before (2 to 2.5): they "
                                       "attack different tasks on it")
    assert per_seed["2"]["status"] == "done"
