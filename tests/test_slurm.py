"""SLURM job generation without a cluster: profiles, planning (arrays, dependencies, kept jobs), the dry-run job
set of the full experiment, the sbatch scripts, and ``harness status`` of a local run.

The same code against a real scheduler is in test_slurm_cluster.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.cli import main
from harness._engine.graph import Graph, Stage, build_graph
from harness._engine.plugins import load_registry
from harness._engine.slurm.plan import Job, plan_jobs, report_job
from harness._engine.slurm.profile import load_profile
from harness._engine.suite import load_suite
from tests.conftest import ROOT, write_suite

EXAMPLE_PROFILE = ROOT / "slurm" / "profile.example.yaml"


def run_cli(*args: str) -> SimpleNamespace:
    """The CLI in this process (a subprocess would spend seconds importing torch for each call)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


# -- profiles -----------------------------------------------------------------------------------------------------
def test_example_profile_loads_and_merges_per_kind_resources():
    profile = load_profile(EXAMPLE_PROFILE)
    train, report = profile.resources("train"), profile.resources("report")
    assert train.gpus == 4 and train.time == "2-00:00:00" and train.partition == profile.defaults.partition
    assert report.gpus == 0 and report.mem == "8G"
    assert profile.resources("metrics").gpus == profile.defaults.gpus
    assert profile.launcher.kind == "torchrun"


@pytest.mark.parametrize("text, key", [
    ("defaults: {time: soon}\n", "defaults.time"),
    ("defaults: {gpu: 2}\n", "defaults.gpu"),
    ("jobs: {training: {gpus: 2}}\n", "jobs.training"),
    ("launcher: {kind: mpirun}\n", "launcher.kind"),
    ("signal_lead: 60\n", "signal_lead"),
    ("gpu_flag: --gpus\n", "gpu_flag"),
])
def test_profile_errors_name_the_file_and_key(tmp_path, text, key):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    proc = run_cli("slurm", "submit", str(ROOT / "suites" / "quick.yaml"), "--profile", str(path), "--dry-run",
                   "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and str(path) in line and key in line and "fix:" in line, line


# -- planning -----------------------------------------------------------------------------------------------------
def _graph(stages: list[Stage], seeds: list[int]) -> Graph:
    return Graph(SimpleNamespace(seeds=seeds), stages, {}, {})  # type: ignore[arg-type]


def _experiment(seeds=(1, 2, 3)) -> Graph:
    """train per seed -> ppl of the trained model per seed; ppl of the base model once; an attack per seed that
    needs the trained model's ppl of its seed and the base ppl."""
    stages = [Stage("metrics/ppl/base", "metrics", "ppl", "perplexity", "base", seeds[0], False)]
    for s in seeds:
        stages.append(Stage(f"train/mono/s{s}", "train", "mono", "monotonic", "base", s, True))
    for s in seeds:
        stages.append(Stage(f"metrics/ppl/mono/s{s}", "metrics", "ppl", "perplexity", "mono", s, True,
                            [f"train/mono/s{s}"]))
    for s in seeds:
        stages.append(Stage(f"attacks/flip/mono/s{s}", "attacks", "flip", "hotflip", "mono", s, True,
                            [f"train/mono/s{s}", f"metrics/ppl/mono/s{s}", "metrics/ppl/base"]))
    return _graph(stages, list(seeds))


def _submitted(jobs: list[Job]) -> dict[str, Job]:
    for i, job in enumerate(jobs):
        job.job_id = str(100 + i)
    return {j.name: j for j in jobs}


def test_seeds_become_arrays_waiting_for_the_same_task_of_their_inputs():
    jobs = _submitted(plan_jobs(_experiment(), done=set(), surviving={}))
    assert list(jobs) == ["metrics__ppl__base", "train__mono__base__seeds", "metrics__ppl__mono__seeds",
                          "attacks__flip__mono__seeds"]
    train, ppl, attack = (jobs[n] for n in list(jobs)[1:])
    assert train.tasks == [0, 1, 2] and train.dependency() == ""
    assert ppl.tasks == [0, 1, 2] and ppl.dependency() == f"aftercorr:{train.job_id}"
    # The attack's task k waits for task k of both arrays and for the one base job.
    assert attack.dependency() == f"afterok:{jobs['metrics__ppl__base'].job_id},aftercorr:{ppl.job_id}:{train.job_id}"
    report = report_job(list(jobs.values()), {})
    report.job_id = "200"
    assert report.dependency() == "afterok:100:101:102:103"


def test_done_and_kept_stages_get_no_job_and_new_jobs_wait_for_exactly_their_inputs():
    done = {"metrics/ppl/base", "train/mono/s1", "metrics/ppl/mono/s1"}
    surviving = {"train/mono/s2": "77_1"}  # queued/running from an earlier submission
    jobs = _submitted(plan_jobs(_experiment(), done=done, surviving=surviving))
    runs = {s.id: j for j in jobs.values() for s in j.stages}
    assert set(runs) == {"train/mono/s3", "metrics/ppl/mono/s2", "metrics/ppl/mono/s3", "attacks/flip/mono/s1",
                         "attacks/flip/mono/s2", "attacks/flip/mono/s3"}
    assert runs["train/mono/s3"].dependency() == ""
    # Tasks wait for different kinds of things (a kept job, a new job): separate jobs, each exact.
    assert runs["metrics/ppl/mono/s2"].dependency() == "afterok:77_1"
    assert runs["metrics/ppl/mono/s3"].dependency() == f"afterok:{runs['train/mono/s3'].job_id}"
    assert runs["attacks/flip/mono/s1"].dependency() == ""
    s2 = runs["attacks/flip/mono/s2"].dependency()
    assert s2 == f"afterok:77_1:{runs['metrics/ppl/mono/s2'].job_id}"
    report = report_job(list(jobs.values()), surviving)
    assert "77_1" in report.dependency(ids={j.name: j.job_id for j in jobs.values()})


def test_arrays_off_gives_one_job_per_stage():
    jobs = plan_jobs(_experiment(), done=set(), surviving={}, arrays=False)
    assert all(not j.is_array and len(j.stages) == 1 for j in jobs) and len(jobs) == 10


# -- the dry-run job set --------------------------------------------------------------------------------------------
def _parse_job_set(slurm_dir: Path) -> tuple[dict[str, tuple[str, int | None]], dict[str, dict[str, list[str]]]]:
    """From the dry run's scripts and submit.sh: stage -> (job, task), and job -> {afterok: [...], aftercorr: [...]}."""
    placed: dict[str, tuple[str, int | None]] = {}
    for script in sorted((slurm_dir / "jobs").glob("*.sbatch")):
        text = script.read_text()
        subprocess.run(["bash", "-n", str(script)], check=True)  # valid bash
        job = script.stem
        for task, stage in re.findall(r"^\s+(\d+)\) STAGE=(\S+) ;;$", text, re.M):
            assert stage not in placed, f"{stage} runs in two jobs"
            placed[stage] = (job, int(task))
        single = re.findall(r"^STAGE=(\S+)$", text, re.M)
        for stage in single:
            assert stage not in placed, f"{stage} runs in two jobs"
            placed[stage] = (job, None)
        array = re.search(r"^#SBATCH --array=(\S+)$", text, re.M)
        tasks = sorted(int(t) for t in array.group(1).split(",")) if array else []
        assert tasks == sorted(t for j, t in placed.values() if j == job and t is not None)
    waits: dict[str, dict[str, list[str]]] = {}
    submit = (slurm_dir / "submit.sh").read_text()
    subprocess.run(["bash", "-n", str(slurm_dir / "submit.sh")], check=True)
    for name, flags in re.findall(r"^J\[(\S+?)\]=\$\(sbatch --parsable(.*?) \1\.sbatch", submit, re.M):
        dep = re.search(r"--dependency=(\S+)", flags)
        parts = dict(p.split(":", 1) for p in dep.group(1).split(",")) if dep else {}
        waits[name] = {kind: re.findall(r"\$\{J\[(.+?)\]\}(_\d+)?", parts.get(kind, "")) for kind in
                       ("afterok", "aftercorr")}
        if dep:
            assert "--kill-on-invalid-dep=yes" in flags
    return placed, waits


def _check_job_set(run_dir: Path, graph: Graph) -> None:
    placed, waits = _parse_job_set(run_dir / "slurm")
    stages = graph.by_id()
    assert set(placed) == set(stages), "every stage (and every seed of it) has exactly one job"
    order = list(waits)
    for stage_id, (job, task) in placed.items():
        assert job in waits, f"{job} is not submitted by submit.sh"
        afterok = {(j, int(t[1:]) if t else None) for j, t in waits[job]["afterok"]}
        aftercorr = {j for j, _ in waits[job]["aftercorr"]}
        for dep in stages[stage_id].deps:
            dep_job, dep_task = placed[dep]
            assert order.index(dep_job) < order.index(job), f"{dep_job} must be submitted before {job}"
            covered = ((dep_job, dep_task) in afterok or (dep_job, None) in afterok
                       or (dep_job in aftercorr and dep_task == task and task is not None))
            assert covered, f"{stage_id} (job {job}) does not wait for its input {dep} (job {dep_job})"
        # ... and waits for nothing that is not an input of one of its job's stages.
        inputs = {placed[d][0] for s, (j, _) in placed.items() if j == job for d in stages[s].deps}
        assert {j for j, _ in afterok} | aftercorr <= inputs
    stage_jobs = {j for j, _ in placed.values()}
    assert {j for j, _ in waits["report"]["afterok"]} == stage_jobs, "the report waits for every stage job"
    assert order[-1] == "report"


def test_full_experiment_dry_run_writes_every_stage_seed_and_dependency(tmp_path):
    suite_path = ROOT / "suites" / "pythia_full.yaml"
    run_dir = tmp_path / "full"
    proc = run_cli("slurm", "submit", str(suite_path), "--mode", "full", "--profile", str(EXAMPLE_PROFILE),
                   "--dry-run", "--out", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    suite = load_suite(suite_path, "full", output_dir=run_dir)
    graph = build_graph(suite)
    _check_job_set(run_dir, graph)
    seeded = [s for s in graph.stages if s.seeded]
    for stage in seeded:  # every seed of the suite is there
        assert {s.seed for s in seeded if (s.section, s.entry, s.model) == (stage.section, stage.entry,
                                                                                 stage.model)} == set(suite.seeds)
    assert not (run_dir / "slurm" / "jobs.json").exists(), "a dry run submits nothing"
    profile = load_profile(EXAMPLE_PROFILE)
    for script in (run_dir / "slurm" / "jobs").glob("*.sbatch"):
        text = script.read_text()
        for line in profile.setup:
            assert line in text
        assert "export HF_HUB_OFFLINE=1" in text
        assert "#SBATCH --partition=gpu" in text
        if script.stem != "report":
            assert f"#SBATCH --signal=B:USR1@{profile.signal_lead_s}" in text and "#SBATCH --requeue" in text
        if script.stem.startswith("train__"):
            assert "#SBATCH --gres=gpu:4" in text and "-m torch.distributed.run" in text
            assert 'NPROC=$SLURM_GPUS_ON_NODE' in text and 'pkill -"$1" -P "$child"' in text


def test_richer_experiment_job_set_with_training_arrays_and_needs(tmp_path):
    registry = load_registry()
    if "monotonic" not in {i.name for i in registry.all() if i.kind == "trainer"}:
        pytest.skip("the monotonic trainer plugin is not installed")
    suite_path = write_suite(tmp_path, """
        name: rich
        seeds: [1, 2, 3]
        models:
          tiny: {plugin: pythia_tiny}
          mono: {plugin: hf_causal_lm, from_train: monotonic}
        train:
          monotonic: {model: tiny, data: {dataset: json, data_files: @DATA@/train.jsonl}, steps: 2}
        metrics:
          perplexity: {data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 2}}
          after: {plugin: perplexity, needs: [perplexity], data: {dataset: json, data_files: @DATA@/test.jsonl}}
        """)
    proc = run_cli("slurm", "submit", str(suite_path), "--dry-run", "--out", str(tmp_path / "run"),
                   "--profile", str(EXAMPLE_PROFILE))
    assert proc.returncode == 0, proc.stderr
    graph = build_graph(load_suite(suite_path, output_dir=tmp_path / "run"))
    _check_job_set(tmp_path / "run", graph)
    submit = (tmp_path / "run" / "slurm" / "submit.sh").read_text()
    assert "--dependency=aftercorr:${J[train__monotonic__tiny__seeds]}" in submit  # task k after training task k
    assert "#SBATCH --array=0,1,2" in (tmp_path / "run" / "slurm" / "jobs" / "train__monotonic__tiny__seeds.sbatch"
                                       ).read_text()


def test_accelerate_fsdp_launcher_and_custom_templates(tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("launcher: {kind: accelerate, strategy: fsdp}\njobs: {train: {gpus: 8}}\n")
    registry = load_registry()
    if "monotonic" not in {i.name for i in registry.all() if i.kind == "trainer"}:
        pytest.skip("the monotonic trainer plugin is not installed")
    suite_path = write_suite(tmp_path, """
        name: acc
        models:
          tiny: {plugin: pythia_tiny}
        train:
          monotonic: {model: tiny, data: {dataset: json, data_files: @DATA@/train.jsonl}, steps: 2}
        """)
    proc = run_cli("slurm", "submit", str(suite_path), "--dry-run", "--out", str(tmp_path / "run"),
                   "--profile", str(profile))
    assert proc.returncode == 0, proc.stderr
    (script,) = (tmp_path / "run" / "slurm" / "jobs").glob("train__*.sbatch")
    text = script.read_text()
    assert "-m accelerate.commands.launch $ACCELERATE_FLAGS" in text and "--use_fsdp" in text
    assert "export HARNESS_PARALLEL=fsdp" in text  # what the trainer reads to shard the model
    assert "#SBATCH --gres=gpu:8" in text and "else NPROC=8; fi" in text

    # A profile may bring its own templates; unknown placeholders are a one-line error.
    (tmp_path / "tmpl").mkdir()
    (tmp_path / "tmpl" / "stage.sbatch.tmpl").write_text("#!/bin/bash\n{{job_name}} {{nonsense}}\n")
    (tmp_path / "tmpl" / "report.sbatch.tmpl").write_text("#!/bin/bash\n{{job_name}}\n")
    profile.write_text("templates: tmpl\n")
    proc = run_cli("slurm", "submit", str(suite_path), "--dry-run", "--out", str(tmp_path / "run2"),
                   "--profile", str(profile))
    assert proc.returncode == 2 and "{{nonsense}}" in proc.stderr


# -- status of a run that ran locally -----------------------------------------------------------------------------
def test_status_of_a_local_run(tmp_path):
    suite_path = write_suite(tmp_path, """
        name: st
        models:
          tiny: {plugin: pythia_tiny}
        metrics:
          a: {plugin: perplexity, data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 2}}
          b: {plugin: perplexity, needs: [a], data: {dataset: json, data_files: @DATA@/test.jsonl, limit: 2}}
        """)
    run_dir = tmp_path / "run"
    assert run_cli("run", str(suite_path), "--out", str(run_dir), "--stage", "metrics/a/tiny",
                   "--no-progress").returncode == 0
    proc = run_cli("status", str(run_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["stage"]: r for r in json.loads(proc.stdout)}
    assert rows["metrics/a/tiny"]["state"] == "done" and rows["metrics/b/tiny"]["state"] == "not started"
    table = run_cli("status", str(run_dir)).stdout
    assert "metrics/b/tiny" in table and "1 done, 1 not started" in table
    assert run_cli("status", str(tmp_path)).returncode == 2  # not a run directory: one-line error


def test_status_without_slurm_reports_what_the_run_directory_knows(tmp_path):
    """A run directory read where SLURM is not reachable (copied to a laptop, say): no guessing about jobs."""
    from harness._engine.slurm.status import run_status
    from harness.store import atomic_write_json

    run_dir = tmp_path / "run"
    stages = [{"id": "metrics/a/m", "deps": [], "key": "ka"}, {"id": "metrics/b/m", "deps": ["metrics/a/m"],
                                                               "key": "kb"}]
    atomic_write_json(run_dir / "config.resolved.json", {"stages": stages})
    atomic_write_json(run_dir / "slurm" / "jobs.json", {"stages": {
        "metrics/a/m": {"job": "5", "key": "ka", "log": "slurm/logs/metrics__a__m.log"},
        "metrics/b/m": {"job": "6", "key": "kb", "log": "slurm/logs/metrics__b__m.log"}}, "report": None})
    (run_dir / "slurm" / "attempts").mkdir()
    (run_dir / "slurm" / "attempts" / "metrics__a__m.jsonl").write_text(
        '{"stage": "metrics/a/m", "job": "5", "restart": 0, "event": "start", "time": 1.0, "rc": null}\n'
        '{"stage": "metrics/a/m", "job": "5", "restart": 0, "event": "end", "time": 2.0, "rc": 1}\n')
    rows = {r.stage: r for r in run_status(run_dir, query_slurm=False)}
    assert rows["metrics/a/m"].state == "unknown" and "exit 1" in rows["metrics/a/m"].detail
    assert rows["metrics/b/m"].state == "unknown" and "has not started" in rows["metrics/b/m"].detail


def test_run_all_script_takes_the_same_code_path(tmp_path):
    suite = str(ROOT / "suites" / "quick.yaml")
    script = subprocess.run(["bash", str(ROOT / "slurm" / "run_all.sh"), suite, "--dry-run", "--out",
                             str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert script.returncode == 0, script.stderr
    assert run_cli("slurm", "submit", suite, "--dry-run", "--out", str(tmp_path / "b")).returncode == 0
    a, b = (sorted((tmp_path / d / "slurm" / "jobs").glob("*.sbatch")) for d in ("a", "b"))
    assert [p.name for p in a] == [p.name for p in b] and a
    for x, y in zip(a, b):
        assert x.read_text().replace(str(tmp_path / "a"), "RUN") == y.read_text().replace(str(tmp_path / "b"), "RUN")
