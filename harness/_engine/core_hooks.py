"""The core's own hook implementations (registered like any plugin): at the end of a run it writes the report
(``final_results.json``, tables, plots, HTML; see :mod:`harness._engine.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def harness_run_finished(run_dir: Path, suite: Any, stages: list[Any]) -> None:
    """The run's last step: the full report from the run directory. ``final_results.json`` is written once, by the
    report; every stage's own ``result.json`` is already durable, so a failure here loses nothing
    (``harness report RUN_DIR`` redoes it)."""
    from .report import build_report

    # The suite's own plugin classes declare the metrics of stages cached from before declarations were recorded.
    classes = {(entry.section, entry.plugin.name): entry.plugin.cls
               for section in ("train", "metrics", "attacks") for entry in suite.section(section).values()}
    build_report(run_dir, suite.report, plugins=lambda section, name: classes.get((section, name)))
