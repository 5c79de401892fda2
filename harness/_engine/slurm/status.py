"""``harness status RUN_DIR``: every stage of a run with its state, for runs started locally or on SLURM.

The run directory is the source of truth for what finished (``done.json`` with the stage's key); SLURM for what
is queued or running; the job's attempt notes (``slurm/attempts/*.jsonl``, written by the sbatch script) and
SLURM's memory of finished jobs for why something did not finish. A stage that never ran because an input failed
says which one, and a failed stage shows its log and the log's last line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...errors import HarnessError
from ..rundir import RunDir, read_records
from . import scheduler
from .plan import flat
from .submit import read_record


@dataclass
class StageStatus:
    stage: str
    state: str  # done | damaged | running | pending | requeued | failed | cancelled | interrupted | not started | unknown
    job: str = ""
    detail: str = ""
    log: str = ""


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln and not ln.startswith("[harness-slurm]")]
    return lines[-1][:160] if lines else ""


def _attempts(run_dir: Path, stage_id: str) -> list[dict[str, Any]]:
    path = run_dir / "slurm" / "attempts" / f"{flat(stage_id)}.jsonl"
    return read_records(path)[0]  # a line cut short by a killed job ends what is read


def run_status(run_dir: Path, query_slurm: bool = True) -> list[StageStatus]:
    run_dir = Path(run_dir).resolve()
    rundir = RunDir(run_dir)
    stages = rundir.resolved()["stages"]
    record = read_record(run_dir)
    refs = [info["job"] for info in record["stages"].values()]
    if record.get("report"):
        refs.append(record["report"]["job"])
    queued: dict[str, scheduler.JobState] = {}
    ended: dict[str, scheduler.JobState] = {}
    asked = bool(refs) and query_slurm and scheduler.available()
    if asked:
        try:
            queued = scheduler.queue(refs)
            ended = scheduler.finished([r for r in refs if r not in queued])
        except HarnessError:  # installed but no controller answers (e.g. not a submit host of this cluster)
            asked = False

    rows: dict[str, StageStatus] = {}
    for stage in stages:  # graph order: inputs come first
        sid = stage["id"]
        sdir = rundir.stage_dir(sid)
        info = record["stages"].get(sid) or {}
        job = info.get("job", "")
        log = _log_of(run_dir, info)
        row = StageStatus(sid, "not started", job, "", log)
        attempts = _attempts(run_dir, sid)
        state = rundir.state(sid, stage["key"])
        if state.status == "done" and state.result is not None:
            result = state.result
            row.state, row.detail = "done", f"{result.get('duration_s', '?')} s, finished {result.get('finished', '?')}"
        elif job in queued:
            q = queued[job]
            if q.state == "RUNNING":
                row.state, row.detail = "running", f"since {_started(attempts)}"
            elif q.reason in scheduler.NEVER_RUNS:
                row.state, row.detail = "cancelled", _blocked_by(stage, rows) or "an input's job failed"
            else:
                row.state = "requeued" if attempts and attempts[-1].get("event") == "requeue" else "pending"
                row.detail = q.reason
        elif job and not asked:  # SLURM not reachable from here: say only what the run directory knows
            last = attempts[-1] if attempts else {}
            row.state = "unknown"
            exit_code = f" (exit {last['rc']})" if last.get("rc") is not None else ""
            row.detail = (f"SLURM not reachable; last attempt: {last['event']}{exit_code}" if last
                          else "SLURM not reachable; the job has not started")
        elif job:
            row.state, row.detail = _ended(job, ended.get(job), attempts, stage, rows)
            if row.state == "failed" and log:
                row.detail += f": {_last_line(Path(log))}" if _last_line(Path(log)) else ""
        elif state.damage:
            row.state, row.detail = "damaged", f"{state.damage}; run again to recompute it"
        elif sdir.exists():
            row.state, row.detail = "interrupted", "partial results kept; run again to resume"
        else:
            blocked = _blocked_by(stage, rows)
            if blocked:
                row.detail = blocked
        rows[sid] = row
    out = list(rows.values())
    report = record.get("report")
    if report:
        out.append(_report_row(run_dir, report, queued, ended))
    return out


def _log_of(run_dir: Path, info: dict[str, Any]) -> str:
    """The stage's log, or SLURM's output of its job when the stage never got to write one (setup failed)."""
    for key in ("log", "slurm_log"):
        if info.get(key) and (run_dir / info[key]).exists():
            return str(run_dir / info[key])
    return str(run_dir / info["log"]) if info.get("log") else ""


def _started(attempts: list[dict[str, Any]]) -> str:
    import time

    starts = [a for a in attempts if a.get("event") == "start"]
    return time.strftime("%H:%M:%S", time.localtime(float(starts[-1]["time"]))) if starts else "?"


def _blocked_by(stage: dict[str, Any], rows: dict[str, StageStatus]) -> str:
    for dep in stage.get("deps", []):
        if dep in rows and rows[dep].state in ("failed", "cancelled"):
            return f"never ran: input {dep} {rows[dep].state}"
    return ""


def _ended(job: str, state: scheduler.JobState | None, attempts: list[dict[str, Any]], stage: dict[str, Any],
           rows: dict[str, StageStatus]) -> tuple[str, str]:
    """State and reason of a stage whose job left the queue without finishing the stage."""
    ends = [a for a in attempts if a.get("event") == "end"]
    if ends and ends[-1].get("rc") not in (0, None):
        return "failed", f"exit {ends[-1]['rc']}"
    if state is not None and state.state == "CANCELLED" and not attempts:
        return "cancelled", _blocked_by(stage, rows) or f"job cancelled before it started ({state.reason})"
    if state is not None:
        return ("failed" if state.state != "COMPLETED" else "interrupted"), \
            f"job {state.state.lower()}" + (f", exit {state.exit_code}" if state.exit_code else "")
    blocked = _blocked_by(stage, rows)
    if blocked:
        return "cancelled", blocked
    if attempts:
        return "failed", "job ended without finishing the stage"
    return "cancelled", "job left the queue without starting"


def _report_row(run_dir: Path, report: dict[str, Any], queued: dict[str, scheduler.JobState],
                ended: dict[str, scheduler.JobState]) -> StageStatus:
    job = report["job"]
    log = _log_of(run_dir, report)
    row = StageStatus("(report)", "not started", job, "", log)
    if job in queued:
        q = queued[job]
        row.state = "running" if q.state == "RUNNING" else "pending"
        row.detail = q.reason if q.state != "RUNNING" else ""
        if q.reason in scheduler.NEVER_RUNS:
            row.state, row.detail = "cancelled", "a stage job failed"
    elif (run_dir / "final_results.json").exists():
        row.state, row.detail = "done", "final_results.json written"
    elif job in ended:
        row.state = "cancelled" if ended[job].state == "CANCELLED" else "failed"
        row.detail = f"job {ended[job].state.lower()}"
    else:
        row.state, row.detail = "unknown", "no final_results.json, and SLURM knows nothing of the job"
    return row


def rows_as_json(rows: list[StageStatus]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
