"""The core's own hook implementations (registered like any plugin): at the end of a run it writes
``final_results.json`` and the rest of the report (see :mod:`harness.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .hookspecs import hookimpl
from .rundir import RunDir
from .store import atomic_write_json


def collect_results(run_dir: Path, stages: list[Any]) -> dict[str, Any]:
    """Every stage of the run with its metrics, or ``status: missing`` (never a placeholder number)."""
    rundir = RunDir(run_dir)
    rows = []
    for stage in stages:
        row = stage.as_dict()
        state = rundir.state(stage.id, stage.key)
        if state.status == "done" and state.result is not None:
            row.update(status="done", metrics=state.result.get("metrics", {}),
                       duration_s=state.result.get("duration_s"))
        else:
            row.update(status="missing", metrics=None)
        rows.append(row)
    return {"stages": rows}


@hookimpl
def harness_run_finished(run_dir: Path, suite: Any, stages: list[Any]) -> None:
    """The run's last step: the full report (aggregates, Table 7, plots, HTML) from the run directory."""
    from .report import build_report

    # The bare stage list first, so a failure while drawing the report still leaves the results in one file
    # (`harness report RUN_DIR` redoes the rest).
    results = collect_results(run_dir, stages)
    results.update(suite=suite.name, mode=suite.mode, seeds=suite.seeds)
    atomic_write_json(run_dir / "final_results.json", results)
    build_report(run_dir, suite.report)
