"""``harness report RUN_DIR``: regenerate the whole report of a run (complete or partial) from its directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from .main import command, console, err_console


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a run directory (what `harness run` printed, or its --out)")


@command("report", "aggregate a run directory into final_results.json, the suite's tables (LaTeX/Markdown), plots and an "
         "HTML report; works on partial runs", _args)
def cmd_report(args: argparse.Namespace) -> int:
    from .._engine.plugins import load_registry
    from .._engine.report import build_report

    # Results written before plugins' declared metrics were recorded get them from the installed plugin classes.
    report = build_report(args.run_dir, plugins=load_registry().plugin_class)
    from .._engine.report import OPEN_FIRST, open_first_lines

    console.print(report.summary, highlight=False, markup=False)
    for name, path in report.files.items():
        if name not in OPEN_FIRST:
            err_console.print(f"{name:>26}  {path}", highlight=False)
    for line in open_first_lines(report.run_dir):  # last: the files to open
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    return 0


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", type=Path, help="the first run directory (A)")
    p.add_argument("run_b", type=Path, help="the second run directory (B); differences read B - A")
    p.add_argument("--changed", action="store_true", help="show only the metrics whose values differ")
    p.add_argument("--csv", type=Path, default=None, metavar="FILE",
                   help="also write every row (section, entry, model, seed, metric, a, b, difference, ci_low, "
                        "ci_high, paired_examples) to FILE")


@command("compare", "compare two runs metric by metric, per entry, model and seed, with a paired interval of "
         "the difference where they share seeds and examples", _compare_args)
def cmd_compare(args: argparse.Namespace) -> int:
    from .._engine.plugins import load_registry
    from .._engine.report.compare import compare_runs, comparison_csv, comparison_text
    from ..store import atomic_write_text

    result = compare_runs(args.run_a, args.run_b, plugins=load_registry().plugin_class)
    console.print(comparison_text(result, changed_only=args.changed), highlight=False, markup=False,
                  soft_wrap=True)
    if args.csv is not None:
        atomic_write_text(args.csv, comparison_csv(result))
        err_console.print(f"wrote {args.csv}", highlight=False)
    return 0
