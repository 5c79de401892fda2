"""``harness study STUDY.yaml``: a study's write-up rendered from its runs (questions -> their primary endpoints)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .main import command, console, err_console


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", type=Path, help="a study file (title, runs, questions -> primary endpoints)")
    p.add_argument("--out", type=Path, default=None, help="write the Markdown here (default: the study's `output`)")


@command("study", "render a study's write-up (Markdown) from its runs: every question answered by the runs' primary "
         "endpoints, with adjusted intervals, samples, power, excluded arms and masking checks", _args)
def cmd_study(args: argparse.Namespace) -> int:
    from .._engine.report.study import render_study
    from ..store import atomic_write_text

    where, text = render_study(args.study)
    where = args.out or where
    atomic_write_text(where, text)
    console.print(text, highlight=False, markup=False, soft_wrap=True)
    err_console.print(f"wrote {where}", highlight=False)
    return 0
