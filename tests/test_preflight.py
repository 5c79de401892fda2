"""Pre-flight checks: each failure is one line and exit status 2, before any stage runs; a good set-up passes and
records what it checked (with library versions) in preflight.json."""

from __future__ import annotations

import json
import os
import shutil
from collections import namedtuple

import pytest

from harness import cli
from harness.errors import HarnessError
from harness._engine.preflight import run_preflight
from harness._engine.slurm.profile import Profile, Resources
from harness._engine.suite import load_suite

from .conftest import run_cli, write_suite

SUITE = """
    seeds: [1]
    models: {tiny: {plugin: pythia_tiny}}
    metrics:
      perplexity: {data: {dataset: json, data_files: @DATA@/test.jsonl, limit: 4}}
    """


def run_error(capsys, *argv: str) -> str:
    """`harness run ...` in this process: must exit 2 with one error line and run no stage."""
    assert cli.main(["run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_good_setup_passes_and_records_versions(tmp_path):
    suite = load_suite(write_suite(tmp_path, SUITE))
    result = run_preflight(suite, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "preflight.json").read_text())
    assert record["versions"]["torch"] and record["versions"]["transformers"]
    assert 0 < record["needed_bytes"] < record["free_bytes"]
    assert any("models.tiny" in c and "metrics.perplexity.data" in c for c in result.checks)


def test_unwritable_run_directory(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    err = run_error(capsys, str(write_suite(tmp_path, SUITE)), "--out", str(blocker / "run"))
    assert "is not writable" in err and "--out" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_run_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = run_error(capsys, str(write_suite(tmp_path, SUITE)), "--out", str(locked / "run"))
    finally:
        locked.chmod(0o700)
    assert "is not writable" in err


def test_not_enough_space_for_the_estimate(tmp_path, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10_000, 9_900, 100))
    err = run_error(capsys, str(write_suite(tmp_path, SUITE)), "--out", str(tmp_path / "run"))
    assert "not enough free space" in err and "100 bytes free" in err and "keep_checkpoints" in err
    assert not (tmp_path / "run" / "stages").exists()


def test_model_not_reachable_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    suite = write_suite(tmp_path, """
        models: {pythia_0.07b: {plugin: hf_causal_lm, path: EleutherAI/pythia-70m-not-cached}}  # a dot, as in pythia_1.4b
        metrics: {perplexity: {data: {dataset: json, data_files: @DATA@/test.jsonl, limit: 4}}}
        """)
    err = run_error(capsys, str(suite), "--out", str(tmp_path / "run"))
    assert "models.pythia_0.07b.path" in err and "not in the local Hugging Face cache" in err
    assert "hf download EleutherAI/pythia-70m-not-cached" in err and "HF_HUB_OFFLINE=1" in err


def test_dataset_not_reachable_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    suite = write_suite(tmp_path, """
        models: {tiny: {plugin: pythia_tiny}}
        metrics: {perplexity: {data: {dataset: some-org/not-cached-corpus, split: test, limit: 10}}}
        """)
    err = run_error(capsys, str(suite), "--out", str(tmp_path / "run"))
    assert "metrics.perplexity.data" in err and "'some-org/not-cached-corpus' (split 'test')" in err
    assert "hf download some-org/not-cached-corpus --repo-type dataset" in err
    assert "HF_DATASETS_OFFLINE=1" in err and "data_files" in err


def test_gpu_requested_but_absent(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    suite = write_suite(tmp_path, SUITE.replace("seeds: [1]", "seeds: [1]\n    device: cuda"))
    err = run_error(capsys, str(suite), "--out", str(tmp_path / "run"))
    assert "device: 'cuda' asked for, but 0 GPU(s) are visible" in err and "device: auto" in err


def test_slurm_profile_without_gpus_for_a_cuda_suite(tmp_path):
    suite = load_suite(write_suite(tmp_path, SUITE.replace("seeds: [1]", "seeds: [1]\n    device: cuda")))
    profile = Profile(defaults=Resources(gpus=0, time="1:00:00"))
    with pytest.raises(HarnessError, match=r"jobs\.metrics\.gpus: the suite asks for device 'cuda'"):
        run_preflight(suite, tmp_path / "run", profile=profile, profile_path="profile.yaml")
    # With GPUs in the profile the login node needs none.
    run_preflight(suite, tmp_path / "run", profile=Profile(defaults=Resources(gpus=1)), profile_path="p.yaml")


def test_profile_offline_env_applies_on_the_login_node(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("harness.hub.hub_reachable", lambda timeout=3.0: True)  # a login node with internet
    suite = load_suite(write_suite(tmp_path, """
        models: {tiny: {plugin: pythia_tiny}}
        metrics: {perplexity: {data: {dataset: some-org/not-cached-corpus, limit: 10}}}
        """))
    run_preflight(suite, tmp_path / "run", profile=Profile(), profile_path="p.yaml")  # jobs would download it
    offline = Profile(env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    with pytest.raises(HarnessError, match="HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set"):
        run_preflight(suite, tmp_path / "run", profile=offline, profile_path="p.yaml")
    assert "HF_HUB_OFFLINE" not in os.environ  # restored


def test_cli_exit_status_and_single_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli("run", str(write_suite(tmp_path, SUITE)), "--out", str(blocker / "run"))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: run directory"), proc.stderr


def test_slurm_submit_stops_before_submitting(tmp_path):
    """`harness slurm submit`: a failed check is one line and exit 2, nothing submitted; a dry run reports it."""
    suite = write_suite(tmp_path, SUITE.replace("seeds: [1]", "seeds: [1]\n    device: cuda"))
    profile = tmp_path / "profile.yaml"
    profile.write_text("defaults: {gpus: 0, time: '1:00:00'}\n")
    proc = run_cli("slurm", "submit", str(suite), "--profile", str(profile), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "jobs.metrics.gpus" in lines[0], proc.stderr
    assert not (tmp_path / "run" / "slurm").exists()
    dry = run_cli("slurm", "submit", str(suite), "--profile", str(profile), "--out", str(tmp_path / "dry"),
                  "--dry-run")
    # A dry run reports the pre-flight's findings, and then refuses all the same: a job without the GPU its stage
    # needs is never planned (tests/test_slurm_fit.py).
    assert dry.returncode == 2, dry.stderr
    assert "pre-flight (would stop a real submission)" in dry.stderr and "jobs.metrics.gpus" in dry.stderr
    assert "error: stage metrics/" in dry.stderr and "needs a GPU (device 'cuda')" in dry.stderr
    assert not (tmp_path / "dry" / "slurm" / "submit.sh").exists()
