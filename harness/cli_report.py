"""``harness report RUN_DIR``: regenerate the whole report of a run (complete or partial) from its directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import command, console, err_console


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory (what `harness run` printed, or its --out)")


@command("report", "aggregate a run directory into final_results.json, the suite's tables (LaTeX/Markdown), plots and an "
         "HTML report; works on partial runs", _args)
def cmd_report(args: argparse.Namespace) -> int:
    from .plugins import load_registry
    from .report import build_report

    # Results written before plugins' declared metrics were recorded get them from the installed plugin classes.
    report = build_report(args.run_dir, plugins=load_registry().plugin_class)
    console.print(report.summary, highlight=False, markup=False)
    for name, path in report.files.items():
        err_console.print(f"{name:>26}  {path}", highlight=False)
    return 0
