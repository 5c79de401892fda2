"""The research suites and their write-up generator.

- both suites under ``studies/monotonic_ffn/suites/`` validate in quick and full mode, and compare what they claim to compare;
- ``studies/monotonic_ffn/research_report.py`` turns a real (miniature) run into the document: Table 7 is the report's own, the
  perplexity gaps are the trained models' measured ones, figures are copied.

The ``shift`` init's function preservation is tested in ``tests/test_monotonic.py``
(``test_shift_init_preserves_logits_and_makes_weights_positive``); the GGUF loading path in ``tests/test_gguf.py``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
import yaml

from tests.conftest import ROOT, run_cli, write_suite

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
            assert {k: entry[k] for k in shared} == {k: train[base][k] for k in shared}, model
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
    # issue 15's arms in both suites: published abs + softplus, shift + project, (GPT-NeoX only: + monotone
    # activation; a gated FFN is not monotone), and the two controls
    for suite, arms in ((pythia, {("abs", "softplus", "original"), ("shift", "project", "original"),
                                  ("shift", "project", "monotone"), ("abs", "none", "original")}),
                        (smol, {("abs", "softplus", "original"), ("shift", "project", "original"),
                                ("shift", "none", "original"), ("abs", "none", "original")})):
        entries = [suite["train"][suite["models"][m]["from_train"]] for m in suite["report"]["compare"]]
        assert {(e["init"], e.get("constraint", "softplus"), e.get("activation", "original"))
                for e in entries if e["plugin"] == "monotonic"} == arms
        assert sum(e.get("ffn_noise", 0) > 0 for e in entries) == 1
    mono = smol["train"][smol["models"]["monotonic"]["from_train"]]
    assert (mono["variant"], mono["init"]) == ("gated_updown", "abs")  # the published recipe


#: The two mini suites' shared recovery-training recipe (two steps on the shipped corpus), a YAML block.
RECIPE = """    model: tiny
    data: {dataset: json, data_files: @DATA@/train.jsonl, limit: 40}
    val_data: {dataset: json, data_files: @DATA@/valid.jsonl}
    seq_len: 32
    micro_batch: 2
    steps: 2
    val_blocks: 4
    checkpoint_every: 2"""

MINI_SUITE = """
name: research_mini
seeds: [1, 2]
device: cpu
models:
  tiny: {plugin: pythia_tiny}
  baseline: {plugin: hf_causal_lm, from_train: baseline}
  mono_abs: {plugin: hf_causal_lm, from_train: mono_abs}
  mono_shift: {plugin: hf_causal_lm, from_train: mono_shift}
train:
  baseline: &r
    plugin: baseline
@RECIPE@
    lr: 1.0e-4
  mono_abs: {<<: *r, plugin: monotonic, init: abs}
  mono_shift: {<<: *r, plugin: monotonic, init: shift}
metrics:
  perplexity:
    data: {dataset: json, data_files: @DATA@/test.jsonl, limit: 2}
report:
  baseline: baseline
  compare: [mono_abs, mono_shift]
  tables: [{name: table7, title: Table 7, columns: [{label: Perplexity, entry: perplexity, metric: perplexity, digits: 2}]}]
  success_threshold: 0.15
  gap_target: 0.15
  attack_reduction_target: 0.40
  curve_thresholds: [0.15, 0.30]
  gap: {entry: perplexity, metric: perplexity}
  attack_metric: success_rate
""".replace("@RECIPE@", RECIPE)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the report's plots need matplotlib")
def test_research_report_writes_the_document_from_a_run(tmp_path):
    runs = tmp_path / "runs"
    suite = write_suite(tmp_path, MINI_SUITE)
    proc = run_cli("run", str(suite), "--out", str(runs / "research_pythia_arch"), "--no-progress", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]

    research_report = _research_report()
    doc, out = tmp_path / "docs" / "research.md", tmp_path / "docs" / "research"
    doc.parent.mkdir()
    assert research_report.main(["--runs", str(runs), "--doc", str(doc), "--out-dir", str(out)]) == 0

    text = doc.read_text()
    run_dir = runs / "research_pythia_arch"
    assert (run_dir / "table7.md").read_text().strip() in text  # the report's own table, not a retyped one
    numbers = json.loads((out / "results.json").read_text())["suites"]
    assert numbers["smollm2"] is None and "**Not run yet.** `bash studies/monotonic_ffn/run.sh smollm2`" in text
    got = numbers["pythia_arch"]["models"]
    final = json.loads((run_dir / "final_results.json").read_text())
    groups = {(g["entry"], g["model"]): g for g in final["results"] if g["section"] == "train"}
    expected = {}
    for model in ("mono_abs", "mono_shift"):
        mine, base = groups[(model, "tiny")]["per_seed"], groups[("baseline", "tiny")]["per_seed"]
        gaps = [mine[s]["metrics"]["initial_val_perplexity"] / base[s]["metrics"]["initial_val_perplexity"] - 1
                for s in ("1", "2")]
        expected[model] = sum(gaps) / 2
        assert got[model]["train_gaps"]["before"]["gap_mean"] == pytest.approx(expected[model])
        assert got[model]["train_gaps"]["before"]["n"] == 2
    # measured through the whole pipeline: the shift init leaves the validation perplexity alone, abs does not
    assert abs(got["mono_shift"]["train_gaps"]["before"]["gap_mean"]) < 1e-3
    assert got["mono_abs"]["train_gaps"]["before"]["gap_mean"] > 1.0
    gap = got["mono_abs"]["test_gap"]
    assert gap["value"] == pytest.approx(got["mono_abs"]["perplexity"]["mean"] / got["baseline"]["perplexity"]["mean"]
                                         - 1)
    assert (f"| mono_abs | mlp_both, `abs` init, W = softplus(V), lr 0.0001 | {research_report.pct(expected['mono_abs'])} |"
            in text)
    figures = sorted(p.name for p in (out / "pythia_arch").glob("*.png"))
    assert "perplexity.png" in figures and "training_curves.png" in figures
    assert all(f"research/pythia_arch/{name}" in text for name in figures)

    # Regenerated after a run on another machine: the document compares the new means with the record it replaces.
    record = json.loads((out / "results.json").read_text())
    old = record["suites"]["pythia_arch"]
    old["invocations"] = [{"cpu": "Another CPU", "start": 1700000000, "seconds": 60, "omp_num_threads": 1,
                           "nproc": 2, "load_before": "0 0 0", "load_after": "0 0 0"}]
    old["models"]["mono_abs"]["perplexity"]["mean"] *= 1.5
    (out / "results.json").write_text(json.dumps(record))
    for _ in range(2):  # a second regeneration from the same run keeps the comparison
        assert research_report.main(["--runs", str(runs), "--doc", str(doc), "--out-dir", str(out)]) == 0
        text = doc.read_text()
        assert "Against the previous record of `pythia_arch` (run on Another CPU, 2023-11-14" in text
        assert "baseline: all " in text and "mono_abs: " in text and "(perplexity: " in text
        assert "the largest relative difference 33%" in text and "Beyond rounding (mono_abs)" in text


LR_SUITE = """
name: research_lr_mini
seeds: [1, 2]
device: cpu
models:
  tiny: {plugin: pythia_tiny}
train:
  base_hi: &r
    plugin: baseline
@RECIPE@
    lr: 1.0e-3
  base_lo: {<<: *r, lr: 1.0e-5}
  shift_lo: {<<: *r, plugin: monotonic, init: shift, constraint: project, lr: 1.0e-5}
""".replace("@RECIPE@", RECIPE)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="the report's plots need matplotlib")
def test_lr_check_reads_each_training_stage_through_the_report(tmp_path):
    runs = tmp_path / "runs"
    run_dir = runs / "research_smollm2_lr"
    proc = run_cli("run", str(write_suite(tmp_path, LR_SUITE)), "--out", str(run_dir), "--no-progress", timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    research_report = _research_report()
    out = tmp_path / "out"
    out.mkdir()
    check = research_report.lr_check(runs, out)
    entries = {e["entry"]: e for e in check["entries"]}
    assert set(entries) == {"base_hi", "base_lo", "shift_lo"}
    for name, entry in entries.items():
        for seed in ("1", "2"):  # the training stages' own metrics, seed by seed
            stage = run_dir / "stages" / "train" / name / f"s{seed}"
            metrics = json.loads((stage / "result.json").read_text())["metrics"]
            assert entry["seeds"][seed]["before"] == metrics["initial_val_perplexity"]
            assert entry["seeds"][seed]["after"] == metrics["final_val_perplexity"]
            assert entry["seeds"][seed]["ffn_weight_change"] == metrics["weight_change"]["ffn"]
        assert entry["after_mean"] == pytest.approx(sum(v["after"] for v in entry["seeds"].values()) / 2)
    assert entries["shift_lo"]["recipe"] == "mlp_both, `shift` init, projected (W >= floor after each step), lr 1e-05"
    text = "\n".join(research_report.lr_check_lines(check))
    e = entries["base_lo"]
    assert (f"| base_lo | unconstrained, lr 1e-05 | {research_report.num(e['seeds']['1']['before'], 2)} | "
            f"{research_report.num(e['seeds']['1']['after'], 2)} | {research_report.num(e['seeds']['2']['after'], 2)} "
            f"| {research_report.num(e['after_mean'], 2)} |") in text
    # without the run, the copy kept in the output directory is read back
    shutil.rmtree(run_dir)
    assert research_report.lr_check(runs, out) == check


def test_best_lr_is_named_per_recipe_with_the_seeds_it_wins_on():
    research_report = _research_report()

    def entry(recipe, lr, afters):
        return {"recipe": f"{recipe}, lr {lr:g}", "lr": lr, "after_mean": sum(afters) / len(afters),
                "seeds": {str(s): {"after": a} for s, a in enumerate(afters, start=1)}}

    text = research_report.best_lr_text([
        entry("unconstrained", 2e-4, (30.9, 29.0)), entry("unconstrained", 5e-5, (29.6, 30.0)),
        entry("shifted", 2e-4, (44.8, 40.0)), entry("shifted", 5e-5, (29.7, 30.1)), entry("alone", 1e-4, (31.0, 32.0))])
    # the baseline's means are 29.95 (2e-4) and 29.80 (5e-5), but 5e-5 is lower on one seed only; a recipe tried at
    # one lr is not named
    assert text == (" Lowest mean validation perplexity after recovery: unconstrained: lr 5e-05 (lowest on 1 of 2 "
                    "seeds); shifted: lr 5e-05 (lowest on 2 of 2 seeds).")


def _research_report():
    sys.path.insert(0, str(STUDY))
    try:
        import research_report
    finally:
        sys.path.remove(str(STUDY))
    return research_report
