"""``harness slurm submit SUITE`` (the suite as dependent SLURM jobs) and ``harness status RUN_DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from .main import command, console, err_console


def _slurm_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="slurm_command", required=True)
    s = sub.add_parser("submit", help="submit a suite as dependent jobs (one per stage; arrays over seeds)",
                       description="Submit a suite's stage graph as SLURM jobs with afterok dependencies. Complete "
                       "stages are skipped; re-submitting a half-finished run keeps its queued/running jobs.")
    s.add_argument("suite", type=Path, help="suite YAML file")
    from .conventions import add_mode_arg, add_override_args

    add_mode_arg(s)
    add_override_args(s)
    s.add_argument("--profile", type=Path, default=None,
                   help="cluster profile YAML (partition, GPUs, time, setup lines; see slurm/profile.example.yaml)")
    s.add_argument("--out", type=Path, default=None, help="run directory (default: the suite's output_dir)")
    s.add_argument("--force", action="store_true",
                   help="use --out even when it holds another suite's run or files that are not a harness run")
    s.add_argument("--dry-run", action="store_true",
                   help="write the sbatch scripts and RUN_DIR/slurm/submit.sh, submit nothing")
    s.add_argument("--skip-preflight", action="store_true",
                   help="skip the pre-flight checks (run directory, free space, GPUs in the profile, models and data "
                        "reachable offline); a dry run only reports them")


@command("slurm", "run a suite on a SLURM cluster: `harness slurm submit SUITE [KEY=VALUE ...] [--profile P] "
         "[--dry-run]`",
         _slurm_args)
def cmd_slurm(args: argparse.Namespace) -> int:
    from .main import note
    from .conventions import chosen_mode, smoke_test_note
    from .._engine.slurm.submit import describe, submit_suite

    explicit_mode, args.mode = args.mode, chosen_mode(args)

    if not args.skip_preflight:  # before anything is submitted; a dry run reports what would stop a submission
        from .._engine.preflight import preflight_for_submission

        checked = preflight_for_submission(args.suite, args.mode, args.out, args.profile, strict=not args.dry_run,
                                           overrides=args.overrides, limit=args.limit)
        for problem in checked.problems:
            err_console.print(f"pre-flight (would stop a real submission): {problem}", highlight=False, markup=False)
    submission = submit_suite(args.suite, args.mode, args.out, args.profile, dry_run=args.dry_run, force=args.force,
                              overrides=args.overrides, limit=args.limit)
    if explicit_mode is None:
        note(smoke_test_note(argparse.Namespace(suite=args.suite, mode=None)))
    table = Table(title=f"{'planned' if args.dry_run else 'submitted'} jobs ({len(submission.done)} stages done, "
                  f"{len(submission.kept)} kept from earlier jobs)", show_lines=True)
    for col in ("job", "runs", "resources", "waits for"):
        table.add_column(col, no_wrap=col == "runs")
    for row in describe(submission):
        table.add_row(*row)
    console.print(table)
    for note in submission.fit.notes:
        err_console.print(note, highlight=False, markup=False)
    if submission.kept:
        err_console.print("kept: " + ", ".join(f"{s} (job {j})" for s, j in submission.kept.items()), highlight=False)
    if submission.cancelled:
        err_console.print("cancelled stale jobs: " + " ".join(submission.cancelled), highlight=False)
    where = submission.run_dir / "slurm"
    if args.dry_run:
        console.print(f"dry run: scripts in {where / 'jobs'}, sbatch calls in {where / 'submit.sh'}", highlight=False)
    elif not submission.jobs:
        console.print("nothing to submit: every stage is done and final_results.json is current", highlight=False)
    else:
        console.print(f"job ids in {where / 'jobs.json'}; follow with `harness status {submission.run_dir}`",
                      highlight=False)
    return 0


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


STYLE = {"done": "green", "running": "cyan", "pending": "yellow", "requeued": "yellow", "failed": "red",
         "cancelled": "red", "interrupted": "magenta"}


@command("status", "one table of every stage of a run: done, running (job id), pending, failed (log)", _status_args)
def cmd_status(args: argparse.Namespace) -> int:
    from .._engine.slurm.status import rows_as_json, run_status

    rows = run_status(args.run_dir)
    if args.json:
        print(rows_as_json(rows))
        return 0
    table = Table(title=f"run {args.run_dir}")
    for col in ("stage", "state", "job", "detail", "log"):
        table.add_column(col, overflow="fold")
    for r in rows:
        style = STYLE.get(r.state, "")
        table.add_row(r.stage, f"[{style}]{r.state}[/]" if style else r.state, r.job, r.detail,
                      r.log if r.state in ("failed", "running", "requeued") else "")
    console.print(table)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    console.print(", ".join(f"{n} {state}" for state, n in counts.items()), highlight=False)
    return 0
