"""The self-contained HTML report: one file, figures embedded as base64 PNGs, no scripts, no external resources."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from .aggregate import Aggregate
from .tables import _cell_text, _notes, attack_label, fmt, model_label

STYLE = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.6em; border-bottom: 2px solid #345; padding-bottom: 6px; }
h2 { font-size: 1.25em; margin-top: 1.8em; color: #234; }
h3 { font-size: 1.05em; margin-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 12px 0; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 4px 9px; text-align: right; }
th { background: #e8eef4; } td:first-child, th:first-child { text-align: left; }
.met { background: #d8f3dc; } .notmet { background: #fde2e1; } .na { background: #eee; color: #555; }
.unsettled { background: #fff3cd; }
.missing { color: #a33; font-weight: bold; } .text { text-align: left; }
.meta { color: #555; font-size: 0.9em; } .note { color: #555; font-size: 0.88em; }
figure { margin: 14px 0; } figcaption { font-size: 0.9em; color: #444; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _indicators_html(indicators: list[dict[str, Any]]) -> str:
    rows, classes = [], []
    for item in indicators:
        value = f"{item['value']:.1%}" if "value" in item else "&mdash;"
        ci = item.get("ci95")
        rows.append([_e(item["indicator"]), _e(item.get("model", "")), _e(item.get("baseline", "")),
                     _e(f"{item.get('entry')}.{item.get('metric')}" if item.get("entry") else ""), value,
                     _e(f"[{ci[0]:.1%}, {ci[1]:.1%}]") if ci else "", _e(item["target"]),
                     f"<b>{_e(item['status'])}</b>", f'<div class="text">{_e(item.get("detail", ""))}</div>'])
        # Only an interval wholly on the target's side is green; open or confounded verdicts are amber.
        classes.append({"met": "met", "not met": "notmet", "not settled": "unsettled", "same as control": "unsettled",
                        "no control": "unsettled", "too few successes": "unsettled"}.get(item["status"], "na"))
    return _table(["indicator", "model", "baseline", "metric", "value", "95% CI", "target", "status", "note"],
                  rows, classes)


def _controls_html(controls: list[dict[str, Any]] | None) -> str:
    if not controls:
        return ""
    rows, classes = [], []
    for row in controls:
        ci = row.get("ci95")
        num = (lambda key: f"{row[key]:.4g}" if key in row else "&mdash;")
        rows.append([_e(row["attack"]), _e(row["control"] or ""), _e(row["model"]), _e(row["metric"]), num("attack_value"),
                     num("control_value"), num("difference"), _e(f"[{ci[0]:.4g}, {ci[1]:.4g}]") if ci else "",
                     f"<b>{_e(row['status'])}</b>"])
        classes.append({"beats control": "met", "below control": "notmet"}.get(row["status"], "unsettled"))
    return ("<h2>Attacks against their controls (paired: same seeds and examples; exploratory)</h2>"
            + _table(["attack", "control", "model", "metric", "attack", "control", "difference", "95% CI", "status"],
                     rows, classes))


def _matched_html(matched: list[dict[str, Any]] | None) -> str:
    if not matched:
        return ""
    rows, classes = [], []
    for row in matched:
        ci = row.get("ci95")
        pct = (lambda key: f"{row[key]:.1%}" if key in row else "&mdash;")
        num = (lambda key: f"{row[key]:.4g}" if key in row else "&mdash;")
        rows.append([_e(row["model"]), _e(row["control_model"]),
                     _e(f"{row['entry']}" + (" (random control)" if row.get("attack_control") else "")),
                     _e(row["metric"]), num("model_value"), num("control_value"),
                     _e("ratio - 1" if row["kind"] == "gap" else "reduction"), pct("value"),
                     _e(f"[{ci[0]:.1%}, {ci[1]:.1%}]") if ci else "", f"<b>{_e(row['status'])}</b>"])
        classes.append({"more robust than control": "met", "less robust than control": "notmet",
                        "matched": "met"}.get(row["status"], "unsettled"))
    return ("<h2>Models against their matched controls (paired: same seeds and examples; exploratory)</h2>"
            + _table(["model", "control model", "entry", "metric", "model", "control", "compared as", "value",
                      "95% CI", "status"], rows, classes))


def _cells_html(table: dict[str, Any], headers: list[str], labels) -> str:
    """A table of summary cells (a report table, the attack table); ``labels(row)`` gives the leading text cells."""
    cols = table["columns"]
    rows = []
    for row in table["rows"]:
        cells = []
        for c, col in zip(row["cells"], cols):
            text = _e(_cell_text(c, col["digits"], " ± ", " †"))
            cells.append(text if c["status"] == "done" else f'<span class="missing" title="{_e(c["status"])}">{text}</span>')
        rows.append([_e(label) for label in labels(row)] + cells)
    return _table(headers + [c["label"] for c in cols], rows) + f'<p class="note">{_e(" ".join(_notes(table)))}</p>'


def _tables_html(tables: list[dict[str, Any]]) -> str:
    return "".join(f"<h2>{_e(table['title'])}</h2>" + _cells_html(table, ["Model"], lambda row: [model_label(row)])
                   for table in tables)


def _attacks_html(attacks: dict[str, Any] | None) -> str:
    if not attacks or not attacks["rows"]:
        return ""
    return ("<h2>Attacks side by side</h2><p class=\"note\">Every attack on every model with the same measures "
            "(success: relative NLL increase of the continuation above the suite's threshold); a control makes "
            "random edits at its attack's budget.</p>"
            + _cells_html(attacks, ["Attack", "Model"], lambda row: [attack_label(row), model_label(row)]))


def _metrics_html(agg: Aggregate) -> str:
    parts = []
    for g in agg.groups:
        if not g.across and not g.missing:
            continue
        seeds = list(g.per_seed)
        rows = []
        for metric, s in g.across.items():
            per_seed = [fmt(s.values[k], 4) if k in s.values else '<span class="missing">missing</span>'
                        for k in seeds]
            rows.append([_e(metric), _e(f"{s.mean:.4g}" if s.mean is not None else "n/a"),
                         _e(f"{s.std:.3g}" if s.std is not None else ""),
                         _e(f"[{s.ci[0]:.4g}, {s.ci[1]:.4g}]" if s.ci else ""), _e(s.ci_method or ""), str(s.n)]
                        + per_seed)
        missing = "".join(f'<p class="missing">missing: {_e(s.id)} ({_e(s.status)})</p>' for s in g.missing)
        where = "from" if g.section == "train" else "on"
        parts.append(f"<h3>{_e(g.section)}.{_e(g.entry)} [{_e(g.plugin)}] {where} {_e(g.model)}</h3>"
                     + (_table(["metric", "mean", "std", "95% CI", "interval from", "n"]
                               + [f"seed {k}" for k in seeds], rows) if rows else "") + missing)
    return "\n".join(parts)


def _declarations_html(agg: Aggregate) -> str:
    """Results that lack a metric their plugin declares (warnings), or hold numbers it does not (notes)."""
    lines = [f'<li class="missing">{_e(w)}</li>' for w in agg.warnings] + [f"<li>{_e(n)}</li>" for n in agg.notes]
    return f"<h2>Declared metrics</h2><ul>{''.join(lines)}</ul>" if lines else ""


def _transfer_html(tm: dict[str, Any] | None) -> str:
    if tm is None:
        return ""
    parts = []
    for metric, matrix in tm["values"].items():
        rows = [[_e(src)] + [fmt(v, 3) if v is not None else '<span class="missing">missing</span>' for v in row]
                for src, row in zip(tm["sources"], matrix)]
        parts.append(f"<h3>{_e(metric)}</h3>" + _table(["source \\ target"] + tm["targets"], rows))
    return ("<h2>Transfer matrix (rows: model the trigger was found on; columns: model evaluated)</h2>"
            + "".join(parts))


def _figures_html(plots: dict[str, dict[str, Any]]) -> str:
    parts = []
    for name, info in plots.items():
        if info["path"] is None:
            continue
        data = base64.b64encode(Path(info["path"]).read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{_e(info["title"])}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{_e(info['title'])} ({_e(name)})</figcaption></figure>")
    skipped = [info["title"] for info in plots.values() if info["path"] is None]
    if skipped:
        parts.append(f'<p class="note">Not drawn (no data in this run): {_e(", ".join(skipped))}.</p>')
    return "\n".join(parts)


def report_html(agg: Aggregate, tables: list[dict[str, Any]], indicators: list[dict[str, Any]],
                plots: dict[str, dict[str, Any]], transfer: dict[str, Any] | None, generated: str,
                attacks: dict[str, Any] | None = None, controls: list[dict[str, Any]] | None = None,
                matched: list[dict[str, Any]] | None = None, headline: str = "") -> str:
    """The page; ``headline``: the primary endpoints' block (the answer to the suite's question), put first."""
    run = agg.run
    env = run.environment
    pkgs = env.get("packages") or {}
    env_line = ", ".join(f"{k} {v}" for k, v in pkgs.items() if v)
    done = sum(s.done for s in run.stages)
    missing = "".join(f"<li><b>{_e(s.id)}</b>: {_e(s.status)}</li>" for s in run.missing)
    body = [
        f"<h1>Robustness report: {_e(run.suite)}</h1>",
        f'<p class="meta">Mode <b>{_e(run.mode)}</b>; seeds {_e(run.seeds)}; {done} of {len(run.stages)} stages '
        f"finished; run directory <code>{_e(run.run_dir)}</code>; report generated {_e(generated)}."
        + (f"<br>Environment: python {_e(env.get('python'))}, {_e(env_line)}; "
           f"{_e(env.get('platform', ''))}." if env else "") + "</p>",
        headline,
        _declarations_html(agg),
        "<h2>Success indicators (exploratory)</h2>", _indicators_html(indicators),
        _tables_html(tables),
        _attacks_html(attacks),
        _controls_html(controls),
        _matched_html(matched),
        "<h2>Figures</h2>", _figures_html(plots),
        _transfer_html(transfer),
        "<h2>All metrics (mean over seeds, sample std, exploratory interval)</h2>", _metrics_html(agg),
        "<h2>Missing stages</h2>",
        f"<ul>{missing}</ul>" if missing else "<p>None: every stage of the run finished.</p>",
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(run.suite)}: robustness report</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
