"""Text outputs: the suite's report tables as LaTeX (the body of a ``table`` environment) and Markdown, and the plain
summary."""

from __future__ import annotations

import re
from typing import Any

from pathlib import Path

from .aggregate import Aggregate, Group, compared_models
from .answer import answer_text, key_figures
from .primary import EXPLORATORY_NOTE as EXPLORATORY

MISSING_MARK = {"not in suite": "n/r", "not run": "n/r", "missing": "--", "no value": "n/a"}
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return re.sub(r"[\\&%$#_{}~^]", lambda m: _LATEX_SPECIAL[m.group()], str(text))


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 10 ** 6:
        return f"{value:.{max(digits, 1)}e}"
    return f"{value:.{digits}f}"


def _cell_text(cell: dict[str, Any], digits: int, pm: str, dagger: str) -> str:
    if cell["status"] != "done":
        return MISSING_MARK[cell["status"]]
    text = fmt(cell["mean"], digits)
    if cell["std"] is not None:
        text += f"{pm}{fmt(cell['std'], digits)}"
    return text + (dagger if cell["partial"] else "")


def _notes(table: dict[str, Any]) -> list[str]:
    statuses = {c["status"] for r in table["rows"] for c in r["cells"]}
    partial = any(c.get("partial") for r in table["rows"] for c in r["cells"])
    notes = [f"Mean ± std over {table['n_seeds']} seed{'s' if table['n_seeds'] != 1 else ''} "
             "(std only where at least 2 seeds finished)."]
    if "missing" in statuses:
        notes.append("--: the stage did not finish (missing, not zero).")
    if "no value" in statuses:
        notes.append("n/a: the stage finished but reported no value for this metric.")
    if statuses & {"not run", "not in suite"}:
        notes.append("n/r: not run in this suite.")
    if partial:
        notes.append("†: fewer seeds finished than the suite ran.")
    return notes


def latex_table(agg: Aggregate, table: dict[str, Any]) -> str:
    """The body of a LaTeX ``table`` environment (no packages needed): ``\\begin{table}\\input{NAME}\\end{table}``
    for the table named NAME in the suite's ``report.tables``."""
    run = agg.run
    cols = table["columns"]
    lines = [f"% {table['title']} of suite '{run.suite}' ({run.mode} mode, seeds {run.seeds}), written by "
             "`harness report`",
             f"% from the measured results in {run.run_dir}.",
             r"\centering",
             r"\caption{" + latex_escape(f"The suite's {table['title']} metrics per model. " + " ".join(_notes(table)))
             .replace("±", r"$\pm$").replace("†", r"$^\dagger$") + "}",
             r"\label{tab:" + table["name"] + "}",
             r"\begin{tabular}{l" + "r" * len(cols) + "}",
             r"\hline",
             " & ".join(["Model"] + [latex_escape(c["label"]) for c in cols]) + r" \\",
             r"\hline"]
    for row in table["rows"]:
        name = latex_escape(row["model"]) + (" (baseline)" if row["baseline"] else "")
        cells = [_cell_text(c, col["digits"], r" $\pm$ ", r"$^\dagger$") for c, col in zip(row["cells"], cols)]
        lines.append(" & ".join([name] + cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def model_label(row: dict[str, Any]) -> str:
    return row["model"] + (" (baseline)" if row["baseline"] else "")


def attack_label(row: dict[str, Any]) -> str:
    return row["attack"] + (" (control)" if row["control"] else "")


def _markdown(table: dict[str, Any], headers: list[str], labels) -> str:
    """A Markdown table of summary cells; ``labels(row)`` gives the leading text cells of a row."""
    cols = table["columns"]
    lines = ["| " + " | ".join(headers + [c["label"] for c in cols]) + " |",
             "|" + "---|" * len(headers) + "---:|" * len(cols)]
    for row in table["rows"]:
        cells = [_cell_text(c, col["digits"], " ± ", " †") for c, col in zip(row["cells"], cols)]
        lines.append("| " + " | ".join(labels(row) + cells) + " |")
    return "\n".join(lines) + "\n\n" + " ".join(_notes(table)) + "\n"


def markdown_table(table: dict[str, Any]) -> str:
    return _markdown(table, ["Model"], lambda row: [model_label(row)])


def markdown_attacks(table: dict[str, Any]) -> str:
    return _markdown(table, ["Attack", "Model"], lambda row: [attack_label(row), model_label(row)])


def indicator_line(item: dict[str, Any]) -> str:
    who = f" ({item['model']} vs {item['baseline']}, {item.get('entry')}.{item.get('metric')})" if "model" in item else ""
    if "value" in item:
        ci = item.get("ci95")
        ci_text = f", 95% CI [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ""
        return (f"{item['indicator']}{who}: {item['value']:.1%} (target {item['target']}{ci_text}; baseline "
                f"{item['baseline_value']:.4g}, model {item['model_value']:.4g}) -> {item['status'].upper()}"
                + (f" ({item['detail']})" if item.get("detail") else ""))
    return f"{item['indicator']}{who}: {item['status']} (target {item['target']}): {item.get('detail', '')}"


def metric_line(group: Group, metric: str) -> str:
    s = group.across[metric]
    if s.mean is None:
        return f"    {metric:<44} n/a"
    std = f" ± {s.std:.4g}" if s.std is not None else ""
    ci = f"  95% CI [{s.ci[0]:.4g}, {s.ci[1]:.4g}] ({s.ci_method})" if s.ci else ""
    return f"    {metric:<44} {s.mean:.4g}{std}  (n={s.n}){ci}"


def control_line(row: dict[str, Any]) -> str:
    who = f"{row['attack']} vs {row['control'] or '(no control)'} on {row['model']}, {row['metric']}"
    if "difference" not in row:
        return f"{who}: {row['status']} ({row.get('detail', '')})"
    ci = row.get("ci95")
    ci_text = f", 95% CI [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ", no interval"
    return (f"{who}: {row['attack_value']:.4g} vs {row['control_value']:.4g}, difference {row['difference']:.4g}"
            f"{ci_text} -> {row['status'].upper()}"
            + (f" (the scales disagree: {row['scales_disagree']})" if row.get("scales_disagree") else ""))


def matched_line(row: dict[str, Any]) -> str:
    what = f"{row['entry']}.{row['metric']}" + (" (a random control)" if row.get("attack_control") else "")
    who = f"{row['model']} vs {row['control_model']}, {what}"
    if "value" not in row:
        return f"{who}: {row['status']} ({row.get('detail', '')})"
    ci = row.get("ci95")
    ci_text = f", 95% CI [{ci[0]:.1%}, {ci[1]:.1%}]" if ci else ", no interval"
    kind = "ratio - 1" if row["kind"] == "gap" else "reduction"
    return (f"{who}: {row['model_value']:.4g} vs {row['control_value']:.4g}, {kind} {row['value']:.1%}{ci_text} -> "
            f"{row['status'].upper()}"
            + (f" ({row['detail']})" if row['status'] in ("destroyed", "unmatched") else "")
            + (f" (the scales disagree: {row['scales_disagree']})" if row.get("scales_disagree") else ""))


def summary_text(agg: Aggregate, tables: list[dict[str, Any]], indicators: list[dict[str, Any]],
                 attacks: dict[str, Any] | None = None, controls: list[dict[str, Any]] | None = None,
                 matched: list[dict[str, Any]] | None = None, headline: list[str] | None = None,
                 masking: list[str] | None = None) -> str:
    """The summary for a person; ``headline``: the lines that answer the suite's question (the primary endpoints),
    put first; ``masking``: the gradient-masking checks' lines."""
    run = agg.run
    n_done = sum(s.done for s in run.stages)
    out = [f"Experiment summary: suite '{run.suite}' ({run.mode} mode), seeds {run.seeds}",
           f"Run directory: {run.run_dir}",
           f"Stages: {n_done} of {len(run.stages)} finished" + (f"; {len(run.missing)} missing" if run.missing else ""),
           ""]
    out += [f"WARNING: {w}" for w in agg.warnings] + [f"Note: {n}" for n in agg.notes]
    if agg.warnings or agg.notes:
        out.append("")
    if headline:
        out += headline + ["", f"Everything below is {EXPLORATORY}.", ""]
    if run.config.baseline:
        out.append(f"Baseline: {run.config.baseline}; compared: {', '.join(compared_models(run)) or '(none)'}")
    # A control's reduction is a reference for its attack's (in the attack's line), never judged against a target.
    out += ["Success indicators (computed from this run; exploratory):"] + [f"  - {indicator_line(i)}"
                                                                            for i in indicators if not i.get("control")]
    if controls:
        out += ["", "Attacks against their controls (attack minus control, paired 95% interval; exploratory):"]
        out += [f"  - {control_line(row)}" for row in controls]
    if matched:
        out += ["", "Models against their matched controls (report.matched_controls; paired 95% intervals; "
                    "exploratory):"]
        out += [f"  - {matched_line(row)}" for row in matched]
    if masking:
        out += ["", *masking]
    for table in tables:
        out += ["", f"{table['title']} (mean ± std over seeds):", markdown_table(table)]
    if attacks and attacks["rows"]:
        out += ["Attacks side by side (mean ± std over seeds):", markdown_attacks(attacks)]
    out.append("All metrics (mean ± std over seeds, n = seeds that finished; exploratory 95% interval):")
    for g in agg.groups:
        if not g.across and not g.missing:
            continue
        out.append(f"  {g.section}.{g.entry} [{g.plugin}] {'from' if g.section == 'train' else 'on'} {g.model}:")
        for metric in g.across:
            out.append(metric_line(g, metric))
        for s in g.missing:
            out.append(f"    MISSING {s.id} ({s.status})")
    if run.missing:
        out += ["", "Missing stages (shown as missing, never as numbers):"]
        out += [f"  - {s.id}: {s.status}" for s in run.missing]
    return "\n".join(out) + "\n"


def short_summary(agg: Aggregate, headline: dict[str, Any], files: dict[str, Path],
                  verdicts: list[str] | None = None) -> str:
    """``experiment_summary.txt``: the answer first (``verdicts``: the primary family's lines, when declared), then
    where to look (the details have their own file)."""
    run = agg.run
    n_done = sum(s.done for s in run.stages)
    out = [f"Experiment summary: suite '{run.suite}' ({run.mode} mode), seeds {run.seeds}",
           f"Stages: {n_done} of {len(run.stages)} finished"
           + (f"; {len(run.missing)} MISSING (listed in {files['summary_details'].name})" if run.missing else ""),
           ""]
    if headline["source"] == "primary":
        out.append("The answer (the suite's primary endpoints, report.primary; 95% intervals):")
    else:
        out.append(f"The answer (each compared model vs the baseline '{run.config.baseline}'; paired 95% intervals; "
                   "attacks: reduction of the success rate, beside their random control's):")
    out += answer_text(headline)
    if verdicts:
        out += [""] + verdicts
    plots = {name: {"path": str(path)} for name, path in files.items() if name.endswith(".png")}
    keys = key_figures(plots)
    if keys:
        out += ["", "Key figures:"] + [f"  {files[name]}" for name in keys]
    if agg.warnings:
        out += ["", f"{len(agg.warnings)} warning{'s' if len(agg.warnings) != 1 else ''} about the plugins' "
                    f"declared metrics: see {files['summary_details'].name}"]
    out += ["", f"Details (every table, comparison and metric): {files['summary_details']}",
            f"Report with figures: {files['html']}"]
    return "\n".join(out) + "\n"
