"""The self-contained HTML report: one file, figures embedded as base64 PNGs, no scripts, no external resources."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from .aggregate import Aggregate
from .answer import key_figures, tone
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
table.headline { font-size: 1em; } table.headline th { background: #1f4e79; color: #fff; }
table.headline td { vertical-align: top; } td.good { background: #d8f3dc; } td.bad { background: #fde2e1; }
td.open { background: #fff3cd; } .verdict { font-weight: bold; display: block; }
.sub { color: #555; font-size: 0.85em; display: block; }
nav.toc { columns: 2; font-size: 0.92em; } nav.toc li { margin: 2px 0; }
.keyfigs { display: flex; flex-wrap: wrap; gap: 0 16px; align-items: flex-start; }
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


def _num(row: dict[str, Any], key: str, fmt: str = ".4g") -> str:
    return format(row[key], fmt) if key in row else "&mdash;"


def _ci(row: dict[str, Any], fmt: str = ".4g") -> str:
    ci = row.get("ci95")
    return _e(f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]") if ci else ""


def _paired_html(title: str, header: list[str], rows: list[list[str]], statuses: list[str], good: set[str],
                 bad: set[str]) -> str:
    """A section of paired comparisons (same seeds and examples): a row is green when its status is in ``good``,
    red in ``bad``, amber otherwise (open or confounded)."""
    classes = ["met" if s in good else "notmet" if s in bad else "unsettled" for s in statuses]
    return (f"<h2>{_e(title)} (paired: same seeds and examples; exploratory)</h2>"
            + _table(header, [[*r, f"<b>{_e(s)}</b>"] for r, s in zip(rows, statuses)], classes))


def _controls_html(controls: list[dict[str, Any]] | None) -> str:
    if not controls:
        return ""
    rows = [[_e(row["attack"]), _e(row["control"] or ""), _e(row["model"]), _e(row["metric"]),
             _num(row, "attack_value"), _num(row, "control_value"), _num(row, "difference"), _ci(row)]
            for row in controls]
    return _paired_html("Attacks against their controls",
                        ["attack", "control", "model", "metric", "attack", "control", "difference", "95% CI",
                         "status"], rows, [row["status"] for row in controls], {"beats control"}, {"below control"})


def _matched_html(matched: list[dict[str, Any]] | None) -> str:
    if not matched:
        return ""
    rows = [[_e(row["model"]), _e(row["control_model"]),
             _e(f"{row['entry']}" + (" (random control)" if row.get("attack_control") else "")),
             _e(row["metric"]), _num(row, "model_value"), _num(row, "control_value"),
             _e("ratio - 1" if row["kind"] == "gap" else "reduction"), _num(row, "value", ".1%"), _ci(row, ".1%")]
            for row in matched]
    return _paired_html("Models against their matched controls",
                        ["model", "control model", "entry", "metric", "model", "control", "compared as", "value",
                         "95% CI", "status"], rows, [row["status"] for row in matched],
                        {"more robust than control", "matched"}, {"less robust than control"})


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


def _masking_html(rows: list[dict[str, Any]] | None) -> str:
    if not rows:
        return ""
    body = [[_e(r["model"]), _e(r["attack"]), _e(r["check"]),
             f'<span class="missing">{_e(r["warning"])}</span>' if r.get("warning") else _e(r["status"]),
             _e(r["detail"])] for r in rows]
    return ("<h2>Gradient-masking checks</h2><p class=\"note\">Per model and gradient attack: success rises with "
            "budget; the attack beats its random control; the transfer from the baseline does not beat the white-box "
            "attack; the continuous relaxation on the same positions succeeds. A failed check weakens the verdict "
            "of that attack on that model.</p>" + _table(["model", "attack", "check", "status", "detail"], body))


def _figure_html(name: str, info: dict[str, Any]) -> str:
    data = base64.b64encode(Path(info["path"]).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_e(info["title"])}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(info['title'])} ({_e(name)})</figcaption></figure>")


def _figures_html(plots: dict[str, dict[str, Any]], skip: list[str] | None = None) -> str:
    parts = [_figure_html(name, info) for name, info in plots.items()
             if info["path"] is not None and name not in (skip or [])]
    skipped = [info["title"] for info in plots.values() if info["path"] is None]
    if skipped:
        parts.append(f'<p class="note">Not drawn (no data in this run): {_e(", ".join(skipped))}.</p>')
    return "\n".join(parts)


def _answer_html(table: dict[str, Any], agg: Aggregate) -> str:
    """The answer: one row per compared model, a cell per comparison (estimate, interval, verdict)."""
    cfg = agg.run.config
    if not table["rows"]:
        return ('<p class="note">No comparison to headline: the suite names no baseline and compared models '
                "(<code>report: {baseline: MODEL, compare: [MODEL]}</code>); every metric is in the table below.</p>")

    def header(col: dict[str, Any]) -> str:
        # A target the suite does not set ("none (report.gap_target)") says nothing in a column head.
        shown = col.get("target") and not str(col["target"]).startswith("none")
        target = f'<span class="sub" style="color:#dde">target {_e(col["target"])}</span>' if shown else ""
        return f'<th title="{_e(col["label"])}">{_e(col.get("short", col["label"]))}{target}</th>'

    head = "<tr><th>model</th>" + "".join(header(c) for c in table["columns"]) + "</tr>"
    rows = []
    for row in table["rows"]:
        cells = []
        for col in table["columns"]:
            cell = row["cells"].get(col["key"])
            if cell is None:
                cells.append('<td class="open">&mdash;</td>')
                continue
            control = (f'<span class="sub">control {_e(col.get("control") or "")}: '
                       f'{cell["control_value"]:+.1%}</span>' if cell.get("control_value") is not None else "")
            cells.append(f'<td class="{tone(cell["status"])}" title="{_e(cell.get("detail", ""))}">'
                         f'{_e(cell["text"])}{control}<span class="verdict">{_e(cell["status"])}</span></td>')
        rows.append(f"<tr><td><b>{_e(row['model'])}</b></td>{''.join(cells)}</tr>")
    if table["source"] == "primary":
        note = ("The suite's primary endpoints (report.primary): each relative effect on its reference with its "
                "Holm-adjusted interval and verdict; the family's details are the first section below.")
    else:
        note = (f"Each cell: the estimate vs the baseline <b>{_e(cfg.baseline)}</b>, its paired 95% interval and "
                "the verdict. Gap: the compared model's metric over the baseline's, minus 1. Attacks: the relative "
                f"reduction of {_e(cfg.attack_metric)} (its random control's reduction below it); <i>met</i> only when "
                "the interval clears the suite's target (<i>no target</i>: it sets none) and the attack's reduction "
                "exceeds its control's. Hover a cell for details.")
    return (f'<table class="headline" id="headline-table">{head}{"".join(rows)}</table>'
            f'<p class="note">{note}</p>')


def _toc(sections: list[tuple[str, str]]) -> str:
    items = "".join(f'<li><a href="#{anchor}">{_e(title)}</a></li>' for anchor, title in sections)
    return f'<h2 id="contents">Details</h2><nav class="toc"><ul>{items}</ul></nav>'


def report_html(agg: Aggregate, tables: list[dict[str, Any]], indicators: list[dict[str, Any]],
                plots: dict[str, dict[str, Any]], transfer: dict[str, Any] | None, generated: str,
                attacks: dict[str, Any] | None = None, controls: list[dict[str, Any]] | None = None,
                matched: list[dict[str, Any]] | None = None, primary_block: str = "",
                masking: list[dict[str, Any]] | None = None, answer: dict[str, Any] | None = None) -> str:
    """The page: the answer (one row per compared model) and the key figures first, then a table of contents into
    the details, the first of which is ``primary_block`` (the primary family, the arms, the shared randomness);
    ``masking``: the gradient-masking checks (:mod:`harness._engine.report.masking`)."""
    run = agg.run
    env = run.environment
    pkgs = env.get("packages") or {}
    env_line = ", ".join(f"{k} {v}" for k, v in pkgs.items() if v)
    done = sum(s.done for s in run.stages)
    missing = "".join(f"<li><b>{_e(s.id)}</b>: {_e(s.status)}</li>" for s in run.missing)
    keys = key_figures(plots)
    # Controls are references for their attacks, never judged against a target: they are not indicator rows.
    judged = [i for i in indicators if not i.get("control")]
    details: list[tuple[str, str, str]] = [
        ("primary", "Primary endpoints, arms and shared randomness", primary_block),
        ("indicators", "Success indicators (exploratory)", _indicators_html(judged)),
        *((f"table-{t['name']}", t["title"], _cells_html(t, ["Model"], lambda row: [model_label(row)]))
          for t in tables),
        ("attacks", "Attacks side by side", _attacks_html(attacks)),
        ("controls", "Attacks against their controls", _controls_html(controls)),
        ("matched", "Models against their matched controls", _matched_html(matched)),
        ("masking", "Gradient-masking checks", _masking_html(masking)),
        ("figures", "All figures", _figures_html(plots, skip=keys)),
        ("transfer", "Transfer matrix", _transfer_html(transfer)),
        ("metrics", "All metrics (mean over seeds, sample std, exploratory interval)", _metrics_html(agg)),
        ("declared", "Declared metrics (warnings and notes)", _declarations_html(agg)),
        ("missing", "Missing stages",
         f"<ul>{missing}</ul>" if missing else "<p>None: every stage of the run finished.</p>"),
        ("environment", "Run and environment",
         f'<p class="meta">Run directory <code>{_e(run.run_dir)}</code>; report generated {_e(generated)}.'
         + (f"<br>Python {_e(env.get('python'))}, {_e(env_line)}; {_e(env.get('platform', ''))}." if env else "")
         + "</p>"),
    ]
    details = [(anchor, title, body) for anchor, title, body in details if body]
    warn = (f' <a href="#declared">{len(agg.warnings)} warning{"s" if len(agg.warnings) != 1 else ""}</a>.'
            if agg.warnings else "")
    missing_link = ' (<a href="#missing">which are missing</a>)' if run.missing else ""
    body = [
        f"<h1>Robustness report: {_e(run.suite)}</h1>",
        f'<p class="meta">Mode <b>{_e(run.mode)}</b>; seeds {_e(run.seeds)}; {done} of {len(run.stages)} stages '
        f"finished{missing_link}.{warn}</p>",
        '<h2 id="answer">The answer</h2>', _answer_html(answer or {"rows": [], "columns": []}, agg),
        ('<h2 id="key-figures">Key figures</h2><div class="keyfigs">'
         + "".join(_figure_html(n, plots[n]) for n in keys) + "</div>") if keys else "",
        _toc([(anchor, title) for anchor, title, _ in details]),
    ]
    # Each detail section's own heading (if its renderer wrote one) is replaced by an anchored one.
    for anchor, title, html_body in details:
        body.append(f'<h2 id="{anchor}">{_e(title)}</h2>' + _strip_heading(html_body))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(run.suite)}: robustness report</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _strip_heading(fragment: str) -> str:
    if fragment.startswith("<h2>"):
        return fragment[fragment.index("</h2>") + len("</h2>"):]
    return fragment
