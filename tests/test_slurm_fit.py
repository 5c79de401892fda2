"""GPU-safe SLURM submission: a stage that needs a GPU gets one from the profile or `harness slurm submit` refuses in
one line naming the stage and the profile key; a job whose time limit is below its planned time (+25%) is refused,
or split into requeued runs when the profile allows; the shipped example profile fits the full experiment. Dry runs
here; the last test submits to a real local cluster (scripts/slurm_local.sh; run under `flock /work/wt/slurm.lock`
where several checkouts share the machine)."""

from __future__ import annotations

import subprocess
import time

import pytest

from harness.errors import HarnessError
from harness._engine.slurm.fit import check_fit
from harness._engine.slurm.profile import load_profile
from harness._engine.suite import load_suite
from tests.conftest import ROOT, write_suite
from tests.test_slurm import EXAMPLE_PROFILE, run_cli

FULL = str(ROOT / "suites" / "pythia_full.yaml")


def error_line(proc) -> str:
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    return lines[0]


def test_full_experiment_without_a_profile_is_refused_naming_stage_and_key(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("slurm", "submit", FULL, "--mode", "full", "--dry-run", "--out", str(out))
    line = error_line(proc)
    assert "stage train/" in line and "needs a GPU" in line and "jobs.train.gpus" in line and "--profile" in line
    assert not (out / "slurm" / "jobs").exists()  # refused before any script is written


def test_the_example_profile_fits_the_full_experiment_and_gives_gpu_jobs_gpus(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("slurm", "submit", FULL, "--mode", "full", "--dry-run", "--out", str(out), "--profile",
                   str(EXAMPLE_PROFILE), "--skip-preflight")
    assert proc.returncode == 0, proc.stderr
    assert "time limits checked against the plan on A100-80GB" in proc.stderr
    scripts = {p.name: p.read_text() for p in (out / "slurm" / "jobs").glob("*.sbatch")}
    train = [t for n, t in scripts.items() if n.startswith("train__")]
    attacks = [t for n, t in scripts.items() if n.startswith("attacks__")]
    assert train and all("#SBATCH --gres=gpu:4" in t for t in train)
    assert attacks and all("#SBATCH --gres=gpu:1" in t for t in attacks)
    assert "--gres" not in scripts["report.sbatch"]


def test_a_time_limit_below_the_plan_is_refused_or_split_by_requeues(tmp_path):
    short = tmp_path / "short.yaml"
    short.write_text(EXAMPLE_PROFILE.read_text().replace('time: "1-00:00:00"', 'time: "5:00:00"'))
    proc = run_cli("slurm", "submit", FULL, "--mode", "full", "--dry-run", "--out", str(tmp_path / "a"),
                   "--profile", str(short), "--skip-preflight")
    line = error_line(proc)
    # the targeted GCG stages (nanoGCG's defaults on 50 documents) are the longest attack stages
    assert "stage attacks/gcg_targeted/" in line and "jobs.attacks.time" in line and "+25% margin" in line
    assert "max_requeues: 1" in line and "more stage entries do not fit" in line
    # Allowed to requeue once, the same job set is accepted and each long stage is planned as two runs.
    split = tmp_path / "split.yaml"
    split.write_text(short.read_text().replace("max_requeues: 0", "max_requeues: 1"))
    suite, profile = load_suite(FULL, "full"), load_profile(split)
    from harness._engine.graph import build_graph

    stages = build_graph(suite).stages
    fit = check_fit(suite, profile, split, stages)
    assert fit.split and all(n == 2 for n in fit.split.values())
    assert all(s.startswith(("attacks/gcg_targeted/", "attacks/random_gcg_targeted/")) for s in fit.split)
    assert fit.gpu["train/monotonic/s42"].startswith("device auto") and len(fit.gpu) == len(
        [s for s in stages if s.section != "report"])
    # Without requeues allowed, the same check refuses.
    with pytest.raises(HarnessError, match="jobs.attacks.time"):
        check_fit(suite, load_profile(short), short, stages)


def test_tiny_suites_need_no_gpu_but_device_cuda_always_does(tmp_path):
    suite = load_suite(ROOT / "suites" / "quick.yaml")
    from harness._engine.graph import build_graph

    fit = check_fit(suite, load_profile(None), None, build_graph(suite).stages)
    assert fit.gpu == {}  # a 1.8M-parameter model: well below GPU_FLOPS
    cuda = write_suite(tmp_path, """
        device: cuda
        models: {tiny: {plugin: pythia_tiny}}
        metrics: {perplexity: {data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}}}
        """)
    line = error_line(run_cli("slurm", "submit", str(cuda), "--dry-run", "--out", str(tmp_path / "run"),
                              "--skip-preflight"))
    assert "stage metrics/perplexity/tiny needs a GPU (device 'cuda')" in line and "jobs.metrics.gpus" in line


def test_gpu_type_must_be_a_known_gpu(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("gpu_type: H1000\n")
    line = error_line(run_cli("slurm", "submit", str(ROOT / "suites" / "quick.yaml"), "--profile", str(bad),
                              "--dry-run", "--out", str(tmp_path / "run")))
    assert "gpu_type" in line and "unknown GPU 'H1000'" in line


# -- the real local cluster -------------------------------------------------------------------------------------------
from tests.test_slurm_cluster import cluster  # noqa: E402,F401  (the module's single-node cluster fixture)


@pytest.mark.slurm
def test_on_a_real_cluster_a_refused_suite_queues_nothing_and_a_fitting_one_runs(cluster, tmp_path):  # noqa: F811
    profile = tmp_path / "cluster.yaml"
    profile.write_text("defaults: {cpus_per_task: 1, time: '0:20:00', gpus: 0}\nsignal_lead_s: 30\n")
    cuda = write_suite(tmp_path, """
        name: needs_gpu
        device: cuda
        models: {tiny: {plugin: pythia_tiny}}
        metrics: {perplexity: {data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 4}}}
        """, name="cuda.yaml")
    line = error_line(run_cli("slurm", "submit", str(cuda), "--out", str(tmp_path / "refused"), "--profile",
                              str(profile), "--skip-preflight"))
    assert "needs a GPU" in line and "jobs.metrics.gpus" in line
    assert not (tmp_path / "refused" / "slurm" / "jobs.json").exists()
    assert subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip() == ""
    auto = write_suite(tmp_path, """
        name: fits
        device: auto
        models: {tiny: {plugin: pythia_tiny}}
        metrics: {perplexity: {data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 4}}}
        """, name="auto.yaml")
    run_dir = tmp_path / "fits"
    proc = run_cli("slurm", "submit", str(auto), "--out", str(run_dir), "--profile", str(profile))
    assert proc.returncode == 0, proc.stderr
    deadline = time.time() + 240
    while time.time() < deadline and not (run_dir / "final_results.json").exists():
        time.sleep(1)
    assert (run_dir / "stages" / "metrics" / "perplexity" / "tiny" / "done.json").exists()
