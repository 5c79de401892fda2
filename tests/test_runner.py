"""The runner and results store: run directory layout, caching by config, resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from harness._engine.runner import Runner
from harness.store import RecordLog, read_json
from harness._engine.suite import load_suite
from tests.conftest import HARNESS, write_suite

SUITE = """
name: resume_test
seeds: [5]
models:
  tiny: {plugin: pythia_tiny}
metrics:
  ppl_a:
    plugin: perplexity
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 24}
    chunk_documents: 2
    batch_tokens: 512
  ppl_b:
    plugin: perplexity
    data: {dataset: json, data_files: @DATA@/valid.jsonl, split: train, limit: 6}
    max_length: 64
"""


def test_run_directory_holds_config_environment_results_and_markers(tmp_path):
    suite = load_suite(write_suite(tmp_path, SUITE), output_dir=tmp_path / "run")
    Runner(suite, show_progress=False).run()
    run = tmp_path / "run"
    resolved = read_json(run / "config.resolved.json")
    assert {s["id"] for s in resolved["stages"]} == {"metrics/ppl_a/tiny", "metrics/ppl_b/tiny"}
    env = read_json(run / "environment.json")
    assert env["packages"]["torch"] and env["packages"]["transformers"] and env["seeds"] == [5]
    for stage in ("ppl_a", "ppl_b"):
        sdir = run / "stages" / "metrics" / stage / "tiny"
        result = read_json(sdir / "result.json")
        assert read_json(sdir / "done.json")["key"] == resolved["stages"][0 if stage == "ppl_a" else 1]["key"]
        assert result["metrics"]["perplexity"] < 500  # far below the 4,096-token vocabulary: a trained model
        assert len((sdir / "records.jsonl").read_text().splitlines()) == result["metrics"]["documents"]
    final = read_json(run / "final_results.json")
    assert [r["status"] for r in final["stages"]] == ["done", "done"]


def test_changed_config_recomputes_only_that_stage(tmp_path):
    path = write_suite(tmp_path, SUITE)
    first = Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False).run()
    assert [o.status for o in first] == ["done", "done"]
    again = Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False).run()
    assert [o.status for o in again] == ["skipped", "skipped"]
    write_suite(tmp_path, SUITE.replace("max_length: 64", "max_length: 32"))
    changed = Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False).run()
    assert {o.stage.entry: o.status for o in changed} == {"ppl_a": "skipped", "ppl_b": "done"}
    assert changed[1].result["metrics"]["max_length"] == 32


def test_kill_9_mid_stage_resumes_to_identical_results(tmp_path):
    path = write_suite(tmp_path, SUITE)
    reference = Runner(load_suite(path, output_dir=tmp_path / "ref"), show_progress=False).run()
    ref_metrics = reference[0].result["metrics"]

    run = tmp_path / "run"
    records = run / "stages" / "metrics" / "ppl_a" / "tiny" / "records.jsonl"
    proc = subprocess.Popen([*HARNESS, "run", str(path), "--out", str(run), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(records.read_bytes().splitlines())
    assert 4 <= done_before < 24, "the kill should land in the middle of the stage"
    assert not (records.parent / "done.json").exists()

    resumed = subprocess.run([*HARNESS, "run", str(path), "--out", str(run), "--no-progress"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    result = read_json(records.parent / "result.json")
    assert result["metrics"] == ref_metrics  # bit-identical, not approximately equal
    ref_records = (tmp_path / "ref" / "stages" / "metrics" / "ppl_a" / "tiny" / "records.jsonl").read_text()
    assert sorted(records.read_text().splitlines()) == sorted(ref_records.splitlines())


def test_stale_partial_stage_is_cleared_when_config_changes(tmp_path):
    path = write_suite(tmp_path, SUITE)
    suite = load_suite(path, output_dir=tmp_path / "run")
    runner = Runner(suite, show_progress=False)
    runner.write_run_files()
    stage = runner.graph.stages[0]
    runner.prepare_stage_dir(stage)
    (runner.stage_dir(stage) / "records.jsonl").write_text('{"id": "bogus", "tokens": 1, "nll_sum": 99}\n')
    write_suite(tmp_path, SUITE.replace("limit: 24", "limit: 4"))
    rerun = Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False)
    out = rerun.run_stage(rerun.graph.stages[0])
    ids = [r["id"] for r in RecordLog(rerun.stage_dir(rerun.graph.stages[0]) / "records.jsonl")]
    assert "bogus" not in ids and out.result["metrics"]["documents"] == 4


def test_only_rank_zero_clears_marks_and_finishes_a_stage(tmp_path):
    """Under torchrun every rank runs the training stage. Before, each cleared a stage directory it found without its
    marker, so one rank deleted the other's half-written stage.json (a real 2-process FSDP job failed that way). Now a
    rank > 0 leaves the directory alone until rank 0 has marked it, and writes no result or done marker."""
    import threading

    import pytest

    from harness.errors import HarnessError

    path = write_suite(tmp_path, SUITE)
    old = Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False)
    old.write_run_files()
    old.prepare_stage_dir(old.graph.stages[0])  # an older config's directory, with a file of that config
    (old.stage_dir(old.graph.stages[0]) / "records.jsonl").write_text('{"id": "old"}\n')
    write_suite(tmp_path, SUITE.replace("limit: 24", "limit: 4"))
    ranks = [Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False, rank=r) for r in (0, 1)]
    stage = ranks[1].graph.stages[0]
    sdir = ranks[1].stage_dir(stage)
    with pytest.raises(HarnessError, match=r"stage.json: rank 1 waited 0 s for rank 0 to prepare stage"):
        ranks[1].prepare_stage_dir(stage, wait_s=0.2)
    assert (sdir / "records.jsonl").exists(), "rank 1 must not clear the directory: that is rank 0's job"

    waiting = threading.Thread(target=ranks[1].prepare_stage_dir, args=(stage,))
    waiting.start()
    time.sleep(0.3)
    assert waiting.is_alive(), "rank 1 went on before rank 0 prepared the directory"
    ranks[0].prepare_stage_dir(stage)
    waiting.join(timeout=10)
    assert not waiting.is_alive() and not (sdir / "records.jsonl").exists()
    assert read_json(sdir / "stage.json")["key"] == stage.key

    out = ranks[1].run_stage(stage)
    assert out.status == "done" and out.result["metrics"]["documents"] == 4
    assert not (sdir / "result.json").exists() and not (sdir / "done.json").exists()
    assert ranks[0].run_stage(stage).status == "done" and ranks[0].is_done(stage)


def test_unknown_stage_id_and_exit_code_of_cli(tmp_path):
    path = write_suite(tmp_path, SUITE)
    proc = subprocess.run([*HARNESS, "run", str(path), "--out", str(tmp_path / "r"), "--stage", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--stage 'nope' matches none of the" in proc.stderr
