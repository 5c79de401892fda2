"""The research suites: both validate in quick and full mode, and compare what they claim to compare.

The write-up (research.md) is rendered from the runs by ``harness study`` (tests/test_study.py). The ``shift``
init's function preservation is tested in ``tests/test_monotonic.py``
(``test_shift_init_preserves_logits_and_makes_weights_positive``); the GGUF loading path in ``tests/test_gguf.py``.
"""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT, run_cli

STUDY = ROOT / "studies" / "monotonic_ffn"
RESEARCH = STUDY / "suites"


@pytest.mark.parametrize("mode", ["quick", "full"])
@pytest.mark.parametrize("suite", ["pythia_arch", "smollm2"])
def test_research_suites_validate(suite, mode):
    """`harness validate` (suite schema, plugin configs, files, stage graph), in-process through the public CLI."""
    from harness.cli import main

    path = RESEARCH / f"{suite}.yaml"
    assert main(["validate", str(path), "--mode", mode]) == 0
    assert len(yaml.safe_load(path.read_text())["seeds"]) >= 3


def test_harness_validate_command_accepts_a_research_suite():
    proc = run_cli("validate", str(RESEARCH / "pythia_arch.yaml"), timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "valid (quick mode)" in proc.stdout


def test_research_suites_compare_like_with_like():
    pythia = yaml.safe_load((RESEARCH / "pythia_arch.yaml").read_text())
    smol = yaml.safe_load((RESEARCH / "smollm2.yaml").read_text())
    for suite, start in ((pythia, "tiny"), (smol, "smollm2")):
        train, report = suite["train"], suite["report"]
        base = suite["models"][report["baseline"]]["from_train"]
        assert train[base]["plugin"] == "baseline"
        shared = ("data", "val_data", "seq_len", "micro_batch", "grad_accum", "steps", "val_blocks")
        for model in report["compare"]:
            entry = train[suite["models"][model]["from_train"]]
            # a monotonic arm or its control (the same |W0| start unconstrained, or the baseline with FFN noise)
            assert entry["plugin"] == "monotonic" or entry.get("ffn_noise", 0) > 0, model
            assert entry["model"] == start
            # a control stopped at its arm's perplexity trains at most `steps` (a cap: at least the arm's), waits
            # for the arm it stops at, and may match on validation text of its own (its arm is measured on the
            # same), never on the documents the perplexity metric reports
            stopped = "stop_at_perplexity_of" in entry
            same = [k for k in shared if not (stopped and k in ("steps", "val_data", "val_blocks"))]
            assert {k: entry[k] for k in same} == {k: train[base][k] for k in same}, model
            if stopped:
                assert entry["needs"] == [entry["stop_at_perplexity_of"]] and entry["steps"] >= train[base]["steps"]
                matched_on, reported = entry["val_data"], suite["metrics"]["perplexity"]["data"]
                if matched_on["data_files"] == reported["data_files"]:
                    assert matched_on.get("skip", 0) >= reported["limit"], model
        # every attack runs on the baseline and compared models (HotFlip on all of them), its control and the
        # transfer matrix on exactly the attack's models
        compared = {report["baseline"], *report["compare"]}
        for name, attack in suite["attacks"].items():
            assert report["baseline"] in attack["models"] and set(attack["models"]) <= compared, name
        assert set(suite["attacks"]["hotflip"]["models"]) == compared
        for attack, controls in (("hotflip", ("random_hotflip",)), ("gcg", ("random_gcg",)),
                                 ("uat", ("random_uat", "uat_transfer"))):
            for control in controls:
                assert suite["attacks"][control]["models"] == suite["attacks"][attack]["models"], control
        for control, attack in (("random_hotflip", "hotflip"), ("random_gcg", "gcg"), ("random_uat", "uat")):
            assert suite["attacks"][control]["control_of"] == attack  # the attack's options, run as its control
    # pythia_arch: published abs + softplus, shift + project, shift + project with a monotone activation, the
    # abs init unconstrained and the noise control
    entries = [pythia["train"][pythia["models"][m]["from_train"]] for m in pythia["report"]["compare"]]
    assert {(e["init"], e.get("constraint", "softplus"), e.get("activation", "original"))
            for e in entries if e["plugin"] == "monotonic"} == {
        ("abs", "softplus", "original"), ("shift", "project", "original"), ("shift", "project", "monotone"),
        ("abs", "none", "original")}
    assert sum(e.get("ffn_noise", 0) > 0 for e in entries) == 1
    # smollm2: the real constraint (no conversion: the abs init on SmolLM2 itself) projected and as softplus, and
    # their twin unconstrained, every arm at the same lr; the primary endpoints compare each constrained arm with
    # the twin and the baseline
    arms = {m: smol["train"][smol["models"][m]["from_train"]] for m in smol["report"]["compare"]}
    assert {(e["init"], e["variant"], e["constraint"]) for e in arms.values()} == {
        ("abs", "gated_updown", "project"), ("abs", "gated_updown", "softplus"), ("abs", "gated_updown", "none")}
    assert len({e["lr"] for e in arms.values()}) == 1
    assert {(p["model"], p["reference"]) for p in smol["report"]["primary"]} == {
        (m, ref) for m, e in arms.items() if e["constraint"] != "none" for ref in ("ctrl_abs_free", "baseline")}
    # the attacked documents are held out from recovery training: the tail of the file it reads the head of
    held_out = smol["attacks"]["hotflip"]["data"]
    trained = smol["train"]["baseline"]["data"]
    assert held_out["data_files"] == trained["data_files"] and held_out["skip"] >= trained["limit"]
