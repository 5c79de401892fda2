"""Common random numbers: arms that share a data recipe and a seed read byte-identical batches (equal recorded
order fingerprints, whatever their entry names), so two entries with the same recipe, start and seed end with
identical weights, validation perplexity and attack records (an A/A difference of exactly zero); another
``data_seed`` reads another order. The report says, per paired comparison, which randomness the arms share."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import DATA_ORDER_FINGERPRINT
from tests.conftest import DATA, train_recipe, write_suite

COMMON = train_recipe(steps=3, checkpoint_every=3)


@pytest.fixture(scope="module")
def aa_run(tmp_path_factory) -> Path:
    from harness._engine.runner import Runner
    from harness._engine.suite import load_suite

    d = tmp_path_factory.mktemp("aa")
    suite = write_suite(d, f"""
        name: aa
        seeds: [42]
        device: cpu
        models:
          tiny: {{plugin: pythia_tiny}}
          first: {{plugin: hf_causal_lm, from_train: first}}
          second: {{plugin: hf_causal_lm, from_train: second_name}}
          other: {{plugin: hf_causal_lm, from_train: other_order}}
        train:
          first: {{plugin: baseline, model: tiny, {COMMON}}}
          second_name: {{plugin: baseline, model: tiny, {COMMON}}}
          other_order: {{plugin: baseline, model: tiny, data_seed: 7, {COMMON}}}
        attacks:
          hotflip:
            data: {{dataset: json, data_files: {DATA}/test.jsonl, split: test}}
            n_examples: 3
            context_tokens: 12
            continuation_tokens: 8
            flips: 1
            beam_width: 2
            models: [first, second, other]
        report:
          baseline: first
          compare: [second, other]
        """)
    outcomes = Runner(load_suite(suite, "quick", output_dir=d / "run"), show_progress=False).run()
    assert {o.status for o in outcomes} == {"done"}, [(o.stage.id, o.status) for o in outcomes]
    return d / "run"


def _result(run: Path, stage: str) -> dict:
    return json.loads((run / "stages" / stage / "result.json").read_text())


def _records(run: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "stages" / stage / "records.jsonl").read_text().splitlines()]
    # wall-clock fields differ between any two runs; everything computed must not
    return [{k: v for k, v in r.items() if "time" not in k and not k.endswith("_s")} for r in rows]


def test_same_recipe_reads_the_same_batches_whatever_the_entry_name(aa_run):
    first = _result(aa_run, "train/first/s42")["metrics"]
    second = _result(aa_run, "train/second_name/s42")["metrics"]
    other = _result(aa_run, "train/other_order/s42")["metrics"]
    assert len(first[DATA_ORDER_FINGERPRINT]) == 64
    assert first[DATA_ORDER_FINGERPRINT] == second[DATA_ORDER_FINGERPRINT]
    assert other[DATA_ORDER_FINGERPRINT] != first[DATA_ORDER_FINGERPRINT]  # data_seed: another order
    # the A/A difference is exactly zero
    assert first["final_val_perplexity"] == second["final_val_perplexity"]
    assert first["final_train_loss"] == second["final_train_loss"]
    assert other["final_train_loss"] != first["final_train_loss"]


def test_same_recipe_gives_identical_attack_records(aa_run):
    a = _records(aa_run, "attacks/hotflip/first/s42")
    b = _records(aa_run, "attacks/hotflip/second/s42")
    assert len(a) == 3 and a == b


def test_report_states_the_randomness_each_comparison_shares(aa_run):
    from harness._engine.report import build_report

    results = build_report(aa_run).results
    rows = {(r["model"], r["reference"]): r for r in results["shared_randomness"]}
    same = rows[("second", "first")]
    assert same["data_order"] == "shared" and same["documents"] == "shared" and same["attack_streams"] == "shared"
    other = rows[("other", "first")]
    assert other["data_order"] == "not shared" and other["documents"] == "shared"
    summary = (aa_run / "experiment_summary.txt").read_text()
    assert "Shared randomness" in summary


def test_a_partial_run_judges_the_seeds_whose_trainings_finished(monkeypatch):
    """Seed 1337's training of one arm has not finished: the order is judged on seed 42 and the rest is said."""
    from harness._engine.report import randomness

    prints = {"a": {"42": "f42", "1337": "g"}, "b": {"42": "f42", "1337": None}}
    monkeypatch.setattr(randomness, "_training_fingerprints", lambda agg, model: prints[model])
    status, why = randomness._data_order(None, "a", "b")
    assert status == "shared" and "at seeds 42 " in why and "seeds 1337: a training stage recorded no" in why
    prints["b"]["42"] = "other"
    assert randomness._data_order(None, "a", "b")[0] == "not shared"
    prints["b"]["42"] = None
    assert randomness._data_order(None, "a", "b")[0] == "unknown"
