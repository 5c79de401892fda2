"""The run's report, regenerated from the run directory alone (``harness report RUN_DIR``; also the run's last step).

Writes, into the run directory: ``final_results.json`` (every stage, every metric per model x seed, across-seed
mean/std/95% interval, the suite's tables, every attack side by side, the success indicators, the headline),
``experiment_summary.txt`` (short: the answer first) and ``summary_details.txt`` (everything), ``results.csv``,
``NAME.tex`` and ``NAME.md`` for each table of ``report.tables`` (without any: one table of every displayed metric),
``plots/*.png``, ``report.html`` (self-contained; the answer first) and TensorBoard event files (``tensorboard/``; an
offline W&B run when asked). Stages that did not finish
are listed as missing and never contribute a number, so a partial run gives a partial, honest report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..rundir import RunDir
from ...store import atomic_write_json, atomic_write_text
from .config import ReportConfig
from .aggregate import aggregate, attack_table, summary_tables
from .collect import RunData, load_run
from .declared import PluginResolver
from .export import write_csv, write_tensorboard, write_wandb
from .answer import answer_table
from .html import report_html
from .plots import make_plots, transfer_matrix
from .tables import latex_table, markdown_table, short_summary, summary_text
from .masking import attach_to_primary, attach_to_verdicts, masking_checks, masking_lines, masking_warnings
from .verdicts import attack_vs_control, indicators, versus_matched_controls
from .arms import arm_checks, arm_lines, withhold_verdicts
from .headline import headline_html
from .primary import flag_scale_disagreements, mark_exploratory, primary_endpoints, primary_lines
from .randomness import randomness_lines, shared_randomness

__all__ = ["OPEN_FIRST", "Report", "build_report", "load_run", "open_first_lines"]

#: The files a person opens first (file key -> name in the run directory), printed last by `harness run` and
#: `harness report`, where the eye lands.
OPEN_FIRST = {"html": "report.html", "summary": "experiment_summary.txt"}


def open_first_lines(run_dir: Path) -> list[str]:
    """``report: PATH`` and ``summary: PATH`` for the files of ``run_dir`` that exist."""
    return [f"{label}: {run_dir / OPEN_FIRST[key]}" for label, key in (("report", "html"), ("summary", "summary"))
            if (run_dir / OPEN_FIRST[key]).exists()]


@dataclass
class Report:
    run_dir: Path
    results: dict[str, Any]
    summary: str  # experiment_summary.txt: the headline and where to look
    details: str  # summary_details.txt: every table, comparison and metric
    files: dict[str, Path]


def _stage_rows(run: RunData) -> list[dict[str, Any]]:
    rows = []
    for s in run.stages:
        row = {"id": s.id, "section": s.section, "entry": s.entry, "plugin": s.plugin, "model": s.model,
               "seed": s.seed, "deps": s.deps, "key": s.key,
               "status": "done" if s.done else "missing", "detail": s.status}
        if s.done:
            row.update(metrics=s.metrics, duration_s=(s.result or {}).get("duration_s"))
        else:
            row["metrics"] = None
        rows.append(row)
    return rows


def build_report(run_dir: str | Path, config: ReportConfig | None = None,
                 plugins: PluginResolver | None = None) -> Report:
    """Aggregate ``run_dir`` and write every report file; ``config`` defaults to the run's own ``report:``;
    ``plugins`` gives the declared metrics of results that do not record them (e.g. ``Registry.plugin_class``)."""
    run = load_run(run_dir, config)
    agg = aggregate(run, plugins)
    tables = summary_tables(agg)
    attacks = attack_table(agg)
    checks = indicators(agg)
    controls = attack_vs_control(agg)
    masking = masking_checks(agg, controls)
    attach_to_verdicts(checks, masking)
    matched = versus_matched_controls(agg)
    arms = arm_checks(agg, matched, checks)
    withhold_verdicts(arms, checks, matched)
    primary = primary_endpoints(agg, arms)
    attach_to_primary(primary, masking)
    randomness = shared_randomness(agg)
    mark_exploratory(checks, controls, matched)
    flag_scale_disagreements(controls, "attack", "control", "model")
    flag_scale_disagreements(matched, "model", "control_model", "entry")
    transfer = transfer_matrix(agg)
    generated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # A `plots` that is a link is removed (never written or deleted through), with one warning line.
    plots = make_plots(agg, RunDir(run.run_dir).real_dir(run.run_dir / "plots"))
    files = {"final_results": run.run_dir / "final_results.json",
             "summary": run.run_dir / "experiment_summary.txt",
             "summary_details": run.run_dir / "summary_details.txt",
             "results_csv": run.run_dir / "results.csv",
             "html": run.run_dir / "report.html"}
    for table in tables:  # named by the table: report.tables[].name
        files.update({f"{table['name']}_tex": run.run_dir / f"{table['name']}.tex",
                      f"{table['name']}_md": run.run_dir / f"{table['name']}.md"})
    files.update({name: Path(info["path"]) for name, info in plots.items() if info["path"]})
    write_csv(agg, files["results_csv"])
    for name, wanted, write in (
            ("tensorboard", run.config.tensorboard, lambda out: write_tensorboard(agg, out)),
            ("wandb", run.config.wandb, lambda out: write_wandb(agg, out, run.config.wandb_project or run.suite))):
        if wanted:
            note = write(run.run_dir / name)
            if note:  # the tracker's package is not installed: said in the report, the rest is written
                agg.notes.append(note)
            else:
                files[name] = run.run_dir / name
    results = {
        "suite": run.suite, "mode": run.mode, "seeds": run.seeds, "models": run.models,
        "generated": generated, "report_config": run.config.model_dump(mode="json"),
        "complete": not run.missing, "missing": [{"id": s.id, "status": s.status} for s in run.missing],
        "stages": _stage_rows(run),
        "results": [g.as_dict() for g in agg.groups],
        "tables": tables, "attacks": attacks, "indicators": checks, "attack_vs_control": controls,
        "versus_matched_controls": matched, "transfer_matrix": transfer,
        "primary": primary, "arms": arms, "shared_randomness": randomness, "masking_checks": masking,
        "warnings": [*agg.warnings, *masking_warnings(masking)], "notes": agg.notes,
        "plots": plots, "files": {k: str(v) for k, v in files.items()},
    }
    verdict_lines = primary_lines(primary) + ["", "Arms that may be compared (report.max_perplexity, matched "
                                                  "controls):"]
    verdict_lines += arm_lines(arms)
    if randomness:
        verdict_lines += ["", "Shared randomness of each paired comparison:"] + randomness_lines(randomness)
    # The answer: one row per compared model, from the primary endpoints when the suite declares them.
    answer = answer_table(agg, checks, primary)
    results["headline"] = answer
    summary = short_summary(agg, answer, files, verdict_lines)
    details = summary_text(agg, tables, checks, attacks, controls, matched, verdict_lines, masking_lines(masking))
    atomic_write_json(files["final_results"], results)
    atomic_write_text(files["summary"], summary)
    atomic_write_text(files["summary_details"], details)
    for table in tables:
        atomic_write_text(files[f"{table['name']}_tex"], latex_table(agg, table))
        atomic_write_text(files[f"{table['name']}_md"], markdown_table(table))
    atomic_write_text(files["html"], report_html(agg, tables, checks, plots, transfer, generated, attacks,
                                                 controls, matched, headline_html(primary, arms, randomness),
                                                 masking, answer))
    return Report(run.run_dir, results, summary, details, files)
