"""`harness validate`: every malformed suite gets one line naming the file, the key and the fix (exit code 2)."""

from __future__ import annotations

import pytest

from harness.cli import main
from tests.conftest import ROOT, run_cli, write_suite

GOOD_METRIC = """
metrics:
  perplexity:
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}
"""
GOOD = "models:\n  tiny: {plugin: pythia_tiny}\n" + GOOD_METRIC

# (suite text, key path expected in the message, words expected in the message)
CASES = [
    ("models: [unclosed\n", "", "invalid YAML at line"),
    ("- just\n- a list\n", "", "must be a mapping"),
    ("", "", "the suite is empty"),
    (GOOD + "metircs: {}\n", "metircs", "did you mean 'metrics'"),
    ("models:\n  tiny: {plugin: pythia_tinny}\n" + GOOD_METRIC, "models.tiny.plugin", "did you mean 'pythia_tiny'"),
    ("models:\n  tiny: {plugin: pythia_tiny}\nmetrics:\n  perplexty: {data: {data_files: x}}\n",
     "metrics.perplexty", "did you mean 'perplexity'"),
    ("models:\n  x: {plugin: perplexity}\n" + GOOD_METRIC, "models.x.plugin", "'perplexity' is a metric plugin"),
    (GOOD + "    strid: 4\n", "metrics.perplexity.strid", "unknown key 'strid' for plugin 'perplexity' (did you mean 'stride'?)"),
    (GOOD + "    batch_tokens: lots\n", "metrics.perplexity.batch_tokens", "must be an integer >= 16, got 'lots'"),
    (GOOD + "    batch_tokens: 1\n", "metrics.perplexity.batch_tokens", "must be an integer >= 16, got 1"),
    ("models:\n  tiny: {plugin: pythia_tiny}\nmetrics:\n  perplexity: {stride: 4}\n",
     "metrics.perplexity.data", "required key missing"),
    ("models:\n  tiny: {plugin: pythia_tiny}\nmetrics:\n  perplexity:\n    data: {data_files: nowhere.jsonl}\n",
     "metrics.perplexity.data.data_files.0", "file not found"),
    ("models:\n  tiny: {plugin: pythia_tiny}\nmetrics:\n  perplexity:\n    data: {datset: json}\n",
     "metrics.perplexity.data.datset", "unknown key 'datset'"),
    (GOOD + "seeds: [1, two]\n", "seeds", "non-negative integers"),
    (GOOD + "seeds: [7, 7]\n", "seeds", "duplicate seeds"),
    (GOOD_METRIC, "models", "no models defined"),
    (GOOD + "    models: [tiny, huge]\n", "metrics.perplexity.models", "unknown model 'huge'"),
    (GOOD + "    needs: [hotflip]\n", "metrics.perplexity.needs", "unknown metric/attack entry 'hotflip'"),
    (GOOD + "device: tpu\n", "device", "unknown device"),
    (GOOD + "quick: [1]\n", "quick", "overrides must be a mapping"),
    (GOOD + "quick: {seedz: [1]}\n", "quick.seedz", "did you mean 'seeds'"),
    ("models:\n  tiny: 5\n" + GOOD_METRIC, "models.tiny", "options must be a mapping"),
    ("models:\n  tiny: {plugin: pythia_tiny, enabled: maybe}\n" + GOOD_METRIC, "models.tiny.enabled", "true or false"),
    ("models:\n  tiny: {plugin: pythia_tiny, dtype: float8}\n" + GOOD_METRIC, "models.tiny.dtype", "float32"),
    ("models:\n  m: {plugin: hf_causal_lm, from_train: nothing}\n" + GOOD_METRIC, "models.m.from_train",
     "unknown train entry 'nothing'"),
    ("models:\n  m: {plugin: hf_causal_lm}\n" + GOOD_METRIC, "models.m.path", "required key missing"),
    (GOOD + "name: 'bad name!'\n", "name", "suite name must be"),
    (GOOD + "report: {success_threshold: high}\n", "report.success_threshold", "must be a number"),
    (GOOD + "report: {ensembles: [{name: worst, entries: [perplexity, hotflip]}]}\n", "report.ensembles[0].entries",
     "unknown attack entry 'perplexity'"),
    (GOOD + "report: {ensembles: [{name: perplexity, entries: [a, b]}]}\n", "report.ensembles[0].name",
     "already an entry of the suite"),
    (GOOD + "report: {ensembles: [{name: worst, entries: [a]}]}\n", "report.ensembles.0.entries", "at least 2"),
    (GOOD + "report: {ensembles: [{name: worst, entries: [a, b], control_of: other}]}\n", "report.ensembles",
     "is not another ensemble"),
]


@pytest.mark.parametrize("text,key,words", CASES, ids=[c[2][:40] for c in CASES])
def test_malformed_suite_gives_one_line(tmp_path, capsys, text, key, words):
    path = write_suite(tmp_path, text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(path) in err
    assert words in err
    if key:
        assert f": {key}: " in err
    assert "fix:" in err
    assert "Traceback" not in err


def test_cli_validate_exit_code_and_no_traceback(tmp_path):
    path = write_suite(tmp_path, GOOD + "    strid: 4\n")
    proc = run_cli("validate", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_mode_overrides_merge_by_entry_name(tmp_path):
    from harness._engine.suite import load_suite

    path = write_suite(tmp_path, GOOD + "    batch_tokens: 4096\nseeds: [1, 2]\nquick:\n  seeds: [3]\n"
                       "  metrics: {perplexity: {batch_tokens: 512}}\n")
    quick = load_suite(path, "quick")
    full = load_suite(path, "full")
    assert quick.seeds == [3] and quick.metrics["perplexity"].config.batch_tokens == 512
    assert full.seeds == [1, 2] and full.metrics["perplexity"].config.batch_tokens == 4096


@pytest.mark.parametrize("suite", ["quick.yaml", "pythia_full.yaml"])
@pytest.mark.parametrize("mode", ["quick", "full"])
def test_shipped_suites_validate(suite, mode, capsys):
    assert main(["validate", str(ROOT / "suites" / suite), "--mode", mode]) == 0
