"""``harness slurm submit``: a suite's stage graph as dependent SLURM jobs, recorded in ``RUN_DIR/slurm/jobs.json``.

The steps, each safe to repeat:

1. load the suite and write the run files (``config.resolved.json``: the stage graph ``harness status`` reads);
2. find what needs no new job: complete stages (``done.json`` holds their key) and stages whose job from an
   earlier submission is still queued or running for the same key, with inputs that are done or kept too;
   other leftover jobs of this run are cancelled (they wait for something that failed, or ran an old config);
3. plan one job per remaining stage (arrays over seeds where they fit) plus a final report job;
4. write the sbatch scripts to ``RUN_DIR/slurm/jobs/`` and submit them in dependency order, each waiting
   (``afterok``/``aftercorr``, ``--kill-on-invalid-dep=yes``) for the jobs of its inputs, new or kept.

``--dry-run`` stops after writing the scripts and ``RUN_DIR/slurm/submit.sh``, the same job set as sbatch calls.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..graph import Graph
from ..runner import Runner
from ..rundir import RunDir, check_run_target, read_json_object
from ...store import atomic_write_json, atomic_write_text
from ..suite import load_suite
from . import scheduler
from .fit import Fit, check_fit
from .plan import Job, flat, plan_jobs, report_job, topological
from .profile import Profile, load_profile
from .scripts import JobContext, render


def slurm_dir(run_dir: Path) -> Path:
    return run_dir / "slurm"


def read_record(run_dir: Path) -> dict[str, Any]:
    record = read_json_object(slurm_dir(run_dir) / "jobs.json", {"stages": dict},
                              "the jobs submitted before are not known to this command")
    return record or {"stages": {}, "report": None, "submissions": []}


@dataclass
class Submission:
    run_dir: Path
    graph: Graph
    profile: Profile
    jobs: list[Job]  # new jobs, the report job last (if any)
    done: set[str]
    kept: dict[str, str]  # stage id -> job kept from an earlier submission
    cancelled: list[str] = field(default_factory=list)
    dry_run: bool = False
    #: What the fit check says (GPUs, time limits, stages split into requeued runs).
    fit: Fit = field(default_factory=Fit)

    def script(self, job: Job) -> Path:
        return slurm_dir(self.run_dir) / "jobs" / f"{job.name}.sbatch"


def submit_suite(suite_path: Path, mode: str = "quick", out: Path | None = None, profile_path: Path | None = None,
                 dry_run: bool = False, force: bool = False, overrides: Sequence[str] = (),
                 limit: int | None = None) -> Submission:
    """Submit (or with ``dry_run`` only write) the jobs of the suite's stages that are not done. ``overrides`` and
    ``limit`` are ``harness run``'s: the suite is resolved with them here and every job passes them on."""
    profile = load_profile(profile_path)
    suite = load_suite(suite_path, mode, output_dir=out, overrides=list(overrides), limit=limit)
    check_run_target(suite.output_dir, suite.name, force=force)
    runner = Runner(suite, show_progress=False)
    runner.write_run_files()
    run_dir, graph = runner.run_dir, runner.graph
    done = {s.id for s in graph.stages if runner.is_done(s)}
    record = read_record(run_dir)

    kept: dict[str, str] = {}
    stale: list[str] = []
    report_alive = False
    if not dry_run and (record["stages"] or record["report"]):
        kept, stale, report_alive = _leftover_jobs(graph, record, done)

    jobs = plan_jobs(graph, done, kept, arrays=profile.arrays)
    # Before anything is written or submitted: every job gets the GPUs and the time its stage needs.
    fit = check_fit(suite, profile, profile_path, [s for job in jobs for s in job.stages])
    report = record.get("report") or {}
    if jobs or (kept and not report_alive):
        if report_alive:
            stale.append(report["job"])  # it does not wait for the new jobs
        jobs.append(report_job(jobs, kept))
    elif not kept and not report_alive and not _report_current(run_dir, done):
        jobs.append(report_job([], {}))

    submission = Submission(run_dir, graph, profile, jobs, done, kept, dry_run=dry_run, fit=fit)
    ctx = JobContext(suite.path, suite.name, mode, run_dir, profile, report_command=_report_command(),
                     overrides=tuple(overrides), limit=limit)
    RunDir(run_dir).real_dir(slurm_dir(run_dir) / "jobs")  # scripts are never written through a link
    for job in jobs:
        atomic_write_text(submission.script(job), render(job, ctx))
    if dry_run:
        atomic_write_text(slurm_dir(run_dir) / "submit.sh", submit_script(submission))
        return submission

    RunDir(run_dir).real_dir(slurm_dir(run_dir) / "logs")  # SLURM does not create --output's directory
    if stale:
        scheduler.cancel(stale)
        submission.cancelled = stale
    entry: dict[str, Any] = {"time": _now(), "profile": str(profile_path) if profile_path else None,
                             "kept": kept, "cancelled": stale, "jobs": {}}
    record.setdefault("submissions", []).append(entry)
    record.update(suite=str(suite.path), mode=mode)
    for job in jobs:  # dependency order: every job's inputs already have ids
        dependency = job.dependency()
        job.job_id = scheduler.submit(submission.script(job), dependency)
        entry["jobs"][job.name] = {"job": job.job_id, "dependency": dependency, "stages": [s.id for s in job.stages]}
        info = {"script": str(submission.script(job).relative_to(run_dir)), "submitted": _now()}
        if job.kind == "report":
            record["report"] = {"job": job.job_id, "log": "slurm/logs/report.log",
                                "slurm_log": f"slurm/logs/report.{job.job_id}.out", **info}
        for stage in job.stages:
            ref = job.ref(stage)
            record["stages"][stage.id] = {"job": ref, "key": stage.key, "log": f"slurm/logs/{flat(stage.id)}.log",
                                          "slurm_log": f"slurm/logs/{job.name}.{ref}.out", **info}
        atomic_write_json(slurm_dir(run_dir) / "jobs.json", record)  # after each job: a crash loses nothing
    return submission


def _leftover_jobs(graph: Graph, record: dict[str, Any], done: set[str]) -> tuple[dict[str, str], list[str], bool]:
    """Jobs of earlier submissions: which to keep (stage id -> job), which to cancel, whether the report job lives.

    A job is kept when it is queued or running, ran the stage's current key, and everything its stage needs is
    done or kept too (otherwise it waits for a job that failed, and SLURM would cancel it anyway)."""
    states = scheduler.queue()
    kept: dict[str, str] = {}
    stale: list[str] = []
    for stage in topological(graph.stages):
        info = record["stages"].get(stage.id)
        if info is None or stage.id in done:
            continue
        state = states.get(info["job"])
        if state is None:
            continue
        if (state.alive and info.get("key") == stage.key
                and all(d in done or d in kept for d in stage.deps)):
            kept[stage.id] = info["job"]
        else:
            stale.append(info["job"])
    known = {s.id for s in graph.stages}
    for stage_id, info in record["stages"].items():  # stages the suite no longer has
        if stage_id not in known and info["job"] in states:
            stale.append(info["job"])
    report = record.get("report") or {}
    report_state = states.get(report.get("job", ""))
    return kept, list(dict.fromkeys(stale)), bool(report_state and report_state.alive)


def _report_current(run_dir: Path, done: set[str]) -> bool:
    """Whether final_results.json is newer than every stage result (no report job needed)."""
    final = run_dir / "final_results.json"
    if not final.exists():
        return False
    newest = max((p.stat().st_mtime for p in (run_dir / "stages").rglob("done.json")), default=0.0)
    return final.stat().st_mtime >= newest


def _report_command() -> str:
    """``report`` when `harness report` is installed, else ``run`` (a plain run writes final_results.json)."""
    from ...cli.main import COMMANDS, build_parser

    build_parser()  # imports the modules that register commands
    return "report" if "report" in COMMANDS else "run"


def submit_script(submission: Submission) -> str:
    """The planned job set as a bash script of sbatch calls (what a real submission does, minus the record)."""
    lines = ["#!/bin/bash",
             f"# Written by `harness slurm submit --dry-run` at {_now()}: the jobs of run {submission.run_dir}",
             "# in dependency order. `bash submit.sh` submits them as planned (without recording the ids in",
             "# jobs.json, which `harness status` reads; `harness slurm submit` does both).",
             "set -euo pipefail",
             # SLURM does not create --output's directory: a job whose log directory is missing fails unseen.
             f"mkdir -p {shlex.quote(str(slurm_dir(submission.run_dir) / 'logs'))}",
             f"cd {shlex.quote(str(slurm_dir(submission.run_dir) / 'jobs'))}", "declare -A J"]
    ids = {job.name: f"${{J[{job.name}]}}" for job in submission.jobs}
    for job in submission.jobs:
        dependency = job.dependency(ids)
        flags = f" --dependency={dependency} --kill-on-invalid-dep=yes" if dependency else ""
        what = ", ".join(s.id for s in job.stages) or "report"
        lines += [f"# {what}", f"J[{job.name}]=$(sbatch --parsable{flags} {job.name}.sbatch | cut -d';' -f1)",
                  f'echo "{job.name}: ${{J[{job.name}]}}"']
    return "\n".join(lines) + "\n"


def describe(submission: Submission) -> list[tuple[str, str, str, str]]:
    """(job, runs, resources, waits for) rows: the job graph, for printing."""
    rows = []
    for job in submission.jobs:
        resources = submission.profile.resources(job.kind)
        res = ", ".join(x for x in (resources.partition, f"{resources.gpus or 0} GPU", resources.time) if x)
        if job.kind == "train" and submission.profile.launcher.kind != "none":
            res += f", {submission.profile.launcher.kind} {submission.profile.launcher.strategy}"
        runs_needed = max((submission.fit.split.get(s.id, 1) for s in job.stages), default=1)
        if runs_needed > 1:
            res += f", up to {runs_needed} runs (requeued at the limit)"
        runs = "\n".join(f"[{t}] {s.id}" for t, s in zip(job.tasks, job.stages)) if job.is_array else (
            job.stages[0].id if job.stages else "report (after every stage)")
        waits = [f"{j if isinstance(j, str) else j.name}" + ("" if t is None else f" task {t}") for j, t in job.after]
        waits += [f"{j.name} (same task)" for j in job.after_corresponding]
        if job.kind == "report":
            waits = [f"all {len(job.after)} stage jobs"] if job.after else []
        rows.append((job.name + (f"  (job {job.job_id})" if job.job_id else ""), runs, res, "\n".join(waits) or "-"))
    return rows


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
