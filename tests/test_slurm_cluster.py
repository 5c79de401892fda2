"""``harness slurm submit`` against a real SLURM cluster started on this machine (scripts/slurm_local.sh).

One suite (training per seed; perplexity of the base and of each trained model; an attack on each trained model) is
submitted; one pending job is cancelled and the suite re-submitted (a new job wired to the surviving ones); the
training job of one seed gets USR1 mid-stage (as SLURM sends before a time limit), checkpoints, requeues and
resumes. Then: every stage finished, no stage started before its inputs were done, results equal a local
``harness run``. A second suite has a failing stage: its dependents never run and ``harness status`` says why;
fixed and re-submitted, the run completes. A third trains with two processes under torchrun inside one job."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from harness.cli import main
from harness._engine.slurm.submit import submit_suite
from harness.store import read_json
from tests.conftest import HARNESS, ROOT, write_suite

pytestmark = pytest.mark.slurm

TRAIN_STEPS = 120


def _missing() -> str | None:
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing); fix: `apt-get install -y slurm-wlm munge` "
                "(scripts/setup.sh does it)")
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd starts jobs as their owner)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A single-node cluster for this module: started by scripts/slurm_local.sh, stopped by pid afterwards."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "start", str(directory)],
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(directory / "slurm.conf")
    try:
        yield directory
    finally:
        # Jobs outlive slurmd (their slurmstepd keeps running): cancel them, let them go, then stop the daemons.
        subprocess.run(["scancel", "--me"], capture_output=True)
        for _ in range(100):
            if not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip():
                break
            time.sleep(0.2)
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "stop", str(directory)], timeout=60)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def harness(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    # One thread, as in the jobs (OMP_NUM_THREADS = the job's CPUs), so local results match bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"harness {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def profile(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text("defaults: {cpus_per_task: 1, time: '0:20:00', gpus: 0}\nsignal_lead_s: 30\n" + extra)
    return path


def jobs_record(run_dir: Path) -> dict:
    return read_json(run_dir / "slurm" / "jobs.json")


def status(run_dir: Path) -> dict[str, dict]:
    """``harness status RUN_DIR --json``, in this process (the CLI's own test is in status_table)."""
    from harness._engine.slurm.status import run_status

    return {r.stage: asdict(r) for r in run_status(run_dir)}


def status_table(run_dir: Path) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", str(run_dir)]) == 0
    return out.getvalue()


def wait_until(condition, timeout: float, what: str, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def queue_empty() -> bool:
    return not subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.strip()


def record_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def attempts(run_dir: Path, stage_id: str) -> list[dict]:
    path = run_dir / "slurm" / "attempts" / (stage_id.replace("/", "__") + ".jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


SUITE = f"""
name: slurm_e2e
seeds: [42, 7]
device: cpu
models:
  tiny: {{plugin: pythia_tiny}}
  mono: {{plugin: hf_causal_lm, from_train: monotonic}}
train:
  monotonic:
    model: tiny
    data: {{dataset: json, data_files: @DATA@/train.jsonl, split: train, limit: 40}}
    seq_len: 32
    micro_batch: 4
    grad_accum: 1
    steps: {TRAIN_STEPS}
    lr: 2.0e-4
    checkpoint_every: 1000
metrics:
  perplexity:
    data: {{dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 4}}
    batch_tokens: 4096
"""
#: An attack on each trained model (added when the attack plugins are installed).
ATTACK = """
attacks:
  hotflip:
    models: [mono]
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}
    n_examples: 3
    context_tokens: 16
    continuation_tokens: 8
    flips: 2
    beam_width: 8
"""


@pytest.fixture(scope="module")
def e2e(cluster, tmp_path_factory):
    """Submit, cancel one pending job and re-submit, USR1 the training of seed 42 mid-stage, wait for the end;
    and run the same suite locally. Returns what the tests look at."""
    from harness._engine.plugins import load_registry

    installed = {(i.kind, i.name) for i in load_registry().all()}
    if ("trainer", "monotonic") not in installed:
        pytest.skip("the monotonic trainer plugin is not installed")
    tmp = tmp_path_factory.mktemp("e2e")
    suite = write_suite(tmp, SUITE + (ATTACK if ("attack", "hotflip") in installed else ""))
    run_dir, cluster_profile = tmp / "slurm_run", profile(tmp)
    # The local reference run, meanwhile (the cluster's jobs leave the CPUs idle while they wait for each other).
    local = subprocess.Popen([*HARNESS, "run", str(suite), "--out", str(tmp / "local_run"), "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    harness("slurm", "submit", str(suite), "--out", str(run_dir), "--profile", str(cluster_profile))
    first = jobs_record(run_dir)

    # A lost job: cancel the pending perplexity job of seed 7, then re-submit the run. (In this process from
    # here on: a new process would spend seconds importing torch while the training races ahead.)
    lost = first["stages"]["metrics/perplexity/mono/s7"]["job"]
    subprocess.run(["scancel", lost], check=True)
    submit_suite(suite, out=run_dir, profile_path=cluster_profile)
    second = jobs_record(run_dir)

    # USR1 to the batch shell of seed 42's training once it is a few steps in.
    train = "train/monotonic/s42"
    records = run_dir / "stages" / train / "records.jsonl"
    wait_until(lambda: record_lines(records) >= 2, 240, "training steps of seed 42", every=0.02)
    subprocess.run(["scancel", "--signal=USR1", "--batch", second["stages"][train]["job"]], check=True)
    steps_at_signal = record_lines(records)
    during = status(run_dir)
    assert record_lines(records) < TRAIN_STEPS, "the training finished before it could be interrupted"

    wait_until(queue_empty, 300, "every job to finish", every=0.5)
    output = local.communicate(timeout=300)[0]
    assert local.returncode == 0, output
    return dict(run_dir=run_dir, local_dir=tmp / "local_run", first=first, second=second, lost=lost,
                during=during, train=train, steps_at_signal=steps_at_signal, suite=suite)


def test_every_stage_finishes_and_status_says_so(e2e):
    rows = status(e2e["run_dir"])
    stages = [s["id"] for s in read_json(e2e["run_dir"] / "config.resolved.json")["stages"]]
    assert set(rows) == {*stages, "(report)"}
    assert {r["state"] for r in rows.values()} == {"done"}, rows
    assert (e2e["run_dir"] / "final_results.json").exists()
    # Right after the signal: the training job running (or already back in the queue), its dependents pending.
    during = e2e["during"]
    assert during[e2e["train"]]["state"] in ("running", "requeued", "pending") and during[e2e["train"]]["job"]
    assert during["metrics/perplexity/mono/s42"]["state"] == "pending"
    assert during["metrics/perplexity/mono/s42"]["detail"] == "Dependency"


def test_no_stage_starts_before_its_inputs_are_done(e2e):
    run_dir = e2e["run_dir"]
    stages = read_json(run_dir / "config.resolved.json")["stages"]
    finished = {}
    for stage in stages:
        tries = attempts(run_dir, stage["id"])
        ends = [a["time"] for a in tries if a["event"] == "end" and a["rc"] == 0]
        assert len(ends) == 1, f"{stage['id']}: {tries}"
        finished[stage["id"]] = ends[0]
    checked = 0
    for stage in stages:
        first_start = min(a["time"] for a in attempts(run_dir, stage["id"]) if a["event"] == "start")
        for dep in stage["deps"]:
            assert first_start >= finished[dep], f"{stage['id']} started before its input {dep} finished"
            checked += 1
    assert checked >= 2


def test_results_equal_a_local_run(e2e):
    """Same metrics, bit for bit, for every stage (timings aside), the interrupted training included."""
    def metrics(run_dir: Path) -> dict[str, dict]:
        out = {}
        for path in sorted((run_dir / "stages").rglob("result.json")):
            m = read_json(path)["metrics"]
            out[str(path.parent.relative_to(run_dir))] = {k: v for k, v in m.items()
                                                          if "time" not in k and "per_s" not in k}
        return out

    slurm, local = metrics(e2e["run_dir"]), metrics(e2e["local_dir"])
    stages = read_json(e2e["run_dir"] / "config.resolved.json")["stages"]
    assert set(slurm) == set(local) == {f"stages/{s['id']}" for s in stages} and len(stages) >= 5
    assert slurm == local


def test_usr1_mid_stage_checkpoints_requeues_and_resumes(e2e):
    run_dir, train = e2e["run_dir"], e2e["train"]
    events = [(a["event"], a["restart"], a["rc"]) for a in attempts(run_dir, train)]
    assert events == [("start", 0, None), ("end", 0, 3), ("requeue", 0, None), ("start", 1, None), ("end", 1, 0)]
    refs = {a["job"] for a in attempts(run_dir, train)}
    assert refs == {e2e["second"]["stages"][train]["job"]}, "the same job, requeued (its dependents kept waiting)"
    log = (run_dir / "slurm" / "logs" / "train__monotonic__s42.log").read_text()
    assert "got SIGUSR1" in log and "requeueing job" in log
    resumed = [int(line.split("resumed from step ")[1].split()[0]) for line in log.splitlines()
               if "resumed from step" in line]
    assert len(resumed) == 1 and e2e["steps_at_signal"] <= resumed[0] < TRAIN_STEPS, (resumed, log[-2000:])
    records = (run_dir / "stages" / train / "records.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == list(range(1, TRAIN_STEPS + 1)), "no step lost or redone"
    assert read_json(run_dir / "stages" / train / "result.json")["metrics"]["steps"] == TRAIN_STEPS


def test_resubmission_keeps_surviving_jobs_and_wires_new_ones_to_them(e2e):
    first, second = e2e["first"], e2e["second"]
    resubmit = second["submissions"][-1]
    assert len(second["submissions"]) == 2
    # Only the cancelled stage got a new stage job (plus a new report job that waits for it).
    new_stage_jobs = {n: j for n, j in resubmit["jobs"].items() if n != "report"}
    assert [j["stages"] for j in new_stage_jobs.values()] == [["metrics/perplexity/mono/s7"]]
    assert second["stages"]["metrics/perplexity/mono/s7"]["job"] != e2e["lost"]
    # ... waiting for the surviving training task of its seed, by id.
    train_s7 = first["stages"]["train/monotonic/s7"]["job"]
    assert train_s7 == second["stages"]["train/monotonic/s7"]["job"]
    (new,) = new_stage_jobs.values()
    if "train/monotonic/s7" in resubmit["kept"]:
        assert new["dependency"] == f"afterok:{train_s7}"
    else:  # the training of seed 7 had finished already: nothing to wait for
        assert new["dependency"] == ""
    kept = set(resubmit["kept"])
    assert {"train/monotonic/s42", "metrics/perplexity/mono/s42"} <= kept
    # Everything in the second record not re-submitted is the first submission's job.
    for stage_id in kept:
        assert second["stages"][stage_id]["job"] == first["stages"][stage_id]["job"]
    # Once all is done a further submission has nothing to do.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["slurm", "submit", str(e2e["suite"]), "--out", str(e2e["run_dir"]), "--profile",
                     str(e2e["run_dir"].parent / "cluster.yaml")]) == 0
    assert "nothing to submit" in out.getvalue()
    assert len(jobs_record(e2e["run_dir"])["submissions"]) == 2


BROKEN_SUITE = """
name: slurm_fail
seeds: [1]
device: cpu
models:
  tiny: {plugin: pythia_tiny}
metrics:
  fine:
    plugin: perplexity
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 2}
  broken:
    plugin: perplexity
    data: {dataset: json, data_files: DOCS, split: train}
  after:
    plugin: perplexity
    needs: [broken]
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 2}
"""


def test_failing_stage_leaves_dependents_never_run_and_status_says_why(cluster, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "To be, or not to be"}\n{"id": "b", "text": \n')  # not JSON: fails late
    suite = write_suite(tmp_path, BROKEN_SUITE.replace("DOCS", str(docs)))
    run_dir, cluster_profile = tmp_path / "run", profile(tmp_path)
    submit_suite(suite, out=run_dir, profile_path=cluster_profile)
    wait_until(queue_empty, 240, "the jobs to end", every=0.5)

    rows = status(run_dir)
    assert rows["metrics/fine/tiny"]["state"] == "done"
    broken = rows["metrics/broken/tiny"]
    assert broken["state"] == "failed" and broken["detail"].startswith("exit 1")
    assert broken["log"].endswith("slurm/logs/metrics__broken__tiny.log") and Path(broken["log"]).exists()
    after = rows["metrics/after/tiny"]
    assert after["state"] == "cancelled" and "metrics/broken/tiny failed" in after["detail"]
    assert rows["(report)"]["state"] == "cancelled"
    assert not attempts(run_dir, "metrics/after/tiny") and not (run_dir / "stages" / "metrics" / "after").exists()
    table = status_table(run_dir)
    assert "failed" in table and "metrics__broken__tiny.log" in table and "never ran" in table

    # Fixed and re-submitted: the failed stage and the one that needs it run, the done one does not.
    docs.write_text('{"id": "a", "text": "To be, or not to be, that is the question."}\n')
    submit_suite(suite, out=run_dir, profile_path=cluster_profile)
    new_jobs = jobs_record(run_dir)["submissions"][-1]["jobs"]
    assert sorted(s for j in new_jobs.values() for s in j["stages"]) == ["metrics/after/tiny", "metrics/broken/tiny"]
    wait_until(queue_empty, 240, "the re-submitted jobs", every=0.5)
    assert {r["state"] for r in status(run_dir).values()} == {"done"}


OVERRIDE_SUITE = """
name: slurm_overrides
seeds: [1]
device: cpu
models:
  tiny: {plugin: pythia_tiny}
metrics:
  ppl:
    plugin: perplexity
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 4}
"""


def test_overrides_and_limit_given_to_submit_reach_every_job(cluster, tmp_path):
    """`harness slurm submit SUITE key=value --limit N`: the jobs resolve the suite as the submission did (the same
    stage keys, so none is refused as another run's), and their numbers equal a local run given the same."""
    suite = write_suite(tmp_path, OVERRIDE_SUITE)
    args = ["metrics.ppl.max_length=16", "--limit", "2"]
    run_dir, local_dir = tmp_path / "run", tmp_path / "local"
    harness("slurm", "submit", str(suite), "--out", str(run_dir), "--profile", str(profile(tmp_path)), *args)
    script = (run_dir / "slurm" / "jobs" / "metrics__ppl__tiny.sbatch").read_text()
    assert "metrics.ppl.max_length=16 --limit 2" in script
    wait_until(queue_empty, 240, "the jobs to end", every=0.5)
    assert {r["state"] for r in status(run_dir).values()} == {"done"}
    harness("run", str(suite), "--out", str(local_dir), "--no-progress", *args)

    resolved = read_json(run_dir / "config.resolved.json")
    assert resolved["overrides"] == ["metrics.ppl.max_length=16"] and resolved["limit"] == 2
    stage = "stages/metrics/ppl/tiny/result.json"
    slurm, local = read_json(run_dir / stage)["metrics"], read_json(local_dir / stage)["metrics"]
    assert slurm["documents"] == 2 and slurm["perplexity"] == local["perplexity"]
    config = read_json(run_dir / "stages/metrics/ppl/tiny/stage.json")["config"]
    assert config["max_length"] == 16 and config["data"]["limit"] == 2  # the suite says 4 and the model's context


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_training_with_two_processes_under_torchrun_in_one_job(cluster, tmp_path, strategy):
    """The profile's launcher: torchrun starts 2 gloo processes in the job, replicating (DDP) or sharding (FSDP)
    the model; USR1 reaches both, they snapshot together, the job requeues and the 2-process training resumes."""
    from harness._engine.plugins import load_registry

    if "monotonic" not in {i.name for i in load_registry().all() if i.kind == "trainer"}:
        pytest.skip("the monotonic trainer plugin is not installed")
    steps = 30  # 2 processes on 2 cores: slower steps
    text = SUITE.replace("seeds: [42, 7]", "seeds: [42]").replace("micro_batch: 4", "micro_batch: 2")
    text = text.replace(f"steps: {TRAIN_STEPS}", f"steps: {steps}")
    suite = write_suite(tmp_path, text.split("metrics:")[0])  # training only
    run_dir = tmp_path / "run"
    cluster_profile = profile(tmp_path, "jobs: {train: {cpus_per_task: 2}}\n"
                              f"launcher: {{kind: torchrun, nproc: 2, strategy: {strategy}}}\n")
    submit_suite(suite, out=run_dir, profile_path=cluster_profile)
    train = "train/monotonic/s42"
    records = run_dir / "stages" / train / "records.jsonl"
    wait_until(lambda: record_lines(records) >= 2, 240, "2-process training steps", every=0.02)
    subprocess.run(["scancel", "--signal=USR1", "--batch", jobs_record(run_dir)["stages"][train]["job"]], check=True)
    assert record_lines(records) < steps, "the training finished before it could be interrupted"
    wait_until(queue_empty, 300, "every job to finish", every=0.5)

    assert {r["state"] for r in status(run_dir).values()} == {"done"}
    metrics = read_json(run_dir / "stages" / train / "result.json")["metrics"]
    assert metrics["world_size"] == 2 and metrics["steps"] == steps and metrics["parallel"] == strategy
    log = (run_dir / "slurm" / "logs" / "train__monotonic__s42.log").read_text()
    assert "launching 2 process(es)" in log and log.count("resumed from step") == 2  # both ranks resumed
    events = [a["event"] for a in attempts(run_dir, train)]
    assert events == ["start", "end", "requeue", "start", "end"]
