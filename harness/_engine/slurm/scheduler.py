"""The few SLURM commands harness uses: sbatch, squeue, scontrol/sacct for finished jobs, scancel.

Job references are what ``squeue --array`` prints: ``123`` for a job, ``122_4`` for task 4 of array 122.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...errors import HarnessError

#: States in which a job will still run (or runs): a new job may wait for it.
ALIVE = {"PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED",
         "SIGNALING", "STAGE_OUT"}
#: Pending reasons that mean the job can never start (a dependency failed).
NEVER_RUNS = {"DependencyNeverSatisfied"}


@dataclass
class JobState:
    ref: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    reason: str = ""
    exit_code: str = ""

    @property
    def alive(self) -> bool:
        return self.state in ALIVE and self.reason not in NEVER_RUNS


def available() -> bool:
    return all(shutil.which(cmd) for cmd in ("sbatch", "squeue", "scontrol", "scancel"))


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    if shutil.which(args[0]) is None:
        raise HarnessError(f"`{args[0]}` not found: this machine is not a SLURM submit host; fix: run on the "
                           "cluster's login node, or use `--dry-run` to only write the job scripts")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise HarnessError(f"`{' '.join(args[:3])} ...` failed: {message[-1] if message else proc.returncode}")
    return proc


def submit(script: Path, dependency: str = "") -> str:
    """sbatch the script (after ``dependency``); returns the job id. A job whose dependency fails is cancelled
    (``--kill-on-invalid-dep``) rather than left pending forever."""
    args = ["sbatch", "--parsable"]
    if dependency:
        args += [f"--dependency={dependency}", "--kill-on-invalid-dep=yes"]
    out = _run([*args, str(script)]).stdout.strip()
    return out.split(";")[0]  # "<id>[;<cluster>]"


def queue(refs: list[str] | None = None) -> dict[str, JobState]:
    """Jobs of this user that SLURM still holds (queued, running, requeued), by reference."""
    out = _run(["squeue", "--me", "--array", "--noheader", "--format=%i|%T|%r"]).stdout
    states = {}
    for line in out.splitlines():
        ref, state, reason = (line.strip().split("|") + ["", ""])[:3]
        states[ref] = JobState(ref, state, reason)
    return {r: s for r, s in states.items() if refs is None or r in refs}


def finished(refs: list[str]) -> dict[str, JobState]:
    """Final states of jobs that left the queue: from accounting (sacct) where the cluster keeps it, otherwise
    from slurmctld's memory (``scontrol show job``, a few minutes after the end)."""
    found: dict[str, JobState] = {}
    if refs and shutil.which("sacct"):
        proc = _run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State,ExitCode",
                     "--jobs=" + ",".join(refs)], check=False)
        if proc.returncode == 0:
            for line in proc.stdout.splitlines():
                ref, state, code = (line.split("|") + ["", ""])[:3]
                if ref in refs:
                    found[ref] = JobState(ref, state.split()[0] if state else "", "", code)
    for ref in refs:
        if ref in found:
            continue
        proc = _run(["scontrol", "show", "job", "--oneliner", ref], check=False)
        if proc.returncode != 0:
            continue
        fields = dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)
        found[ref] = JobState(ref, fields.get("JobState", ""), fields.get("Reason", ""), fields.get("ExitCode", ""))
    return found


def cancel(refs: list[str]) -> None:
    if refs:
        _run(["scancel", *refs], check=False)
