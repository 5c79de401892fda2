"""The report's answer: the suite's question answered in one table, one row per compared model (the first thing
the HTML page and the summary show; headline.py renders the primary family's details below it).

Where the suite declares primary endpoints (``report.primary``, judged elsewhere and stored as plain data under
``final_results.json["primary"]``), each endpoint is a cell of its model's row: the estimate, its interval and its
verdict. Until then (or in a suite without them) the row is built from the success indicators: the gap metric
against the baseline (say perplexity: the cost), then, for every attack, the reduction of its success against the
baseline beside its random control's reduction, with the indicator's verdict (which already asks the attack to beat
its control). Controls are never columns: a control's reduction is a reference for its attack's, not a result
judged against a target.

The headline is plain data (``{"source", "columns", "rows"}``); the HTML and the text summary render it the same
way, so both open with the same answer.
"""

from __future__ import annotations

from typing import Any

from .aggregate import Aggregate, attack_entries, compared_models, is_control
from .arms import DESTROYED, UNMATCHED
from .text import interval, pct

#: Verdicts that read as the hoped-for answer / its opposite; everything else is open (amber).
GOOD = {"met", "beats control", "more robust than control", "matched", "effect as hoped"}
#: Statuses that withhold the verdict (and the interval) of a comparison.
UNJUDGED = {DESTROYED, UNMATCHED}
BAD = {"not met", "below control", "less robust than control", "opposite effect"}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else pct(value)


def _cell(value: float | None, ci: list[float] | None, status: str, detail: str = "",
          control: float | None = None) -> dict[str, Any]:
    return {"value": value, "ci95": ci, "status": status, "control_value": control, "detail": detail,
            # An arm judged by no verdict (destroyed, unmatched) gets no interval: say why instead of "no interval".
            "text": (f"{_pct(value)} " + ("(not compared)" if ci is None and status in UNJUDGED
                                          else interval(ci, missing="no interval"))
                     if value is not None else "")}


def _from_primary(agg: Aggregate, primary: list[dict[str, Any]]) -> dict[str, Any]:
    """One column per (entry, metric, reference) of the endpoints, one row per model they judge."""
    columns: list[dict[str, Any]] = []
    rows: dict[str, dict[str, Any]] = {}
    for end in primary:
        key = f"{end.get('entry')}.{end.get('metric')} vs {end.get('reference')}"
        if not any(c["key"] == key for c in columns):
            columns.append({"key": key, "label": key, "entry": end.get("entry"), "metric": end.get("metric"),
                            "reference": end.get("reference"), "target": end.get("target", "")})
        row = rows.setdefault(end["model"], {"model": end["model"], "cells": {}})
        value = end.get("effect", end.get("value"))  # the relative effect on the reference, with its interval
        row["cells"][key] = _cell(value if isinstance(value, (int, float)) else None, end.get("ci", end.get("ci95")),
                                  str(end.get("status", "not settled")), str(end.get("detail", "")))
    return {"source": "primary", "columns": columns, "rows": _ordered(agg, rows)}


def _ordered(agg: Aggregate, rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    order = [m for m in agg.run.models if m in rows] + [m for m in rows if m not in agg.run.models]
    return [rows[m] for m in order]


def _from_indicators(agg: Aggregate, indicators: list[dict[str, Any]]) -> dict[str, Any]:
    run, cfg = agg.run, agg.run.config
    models = compared_models(run)
    columns: list[dict[str, Any]] = []
    rows = {m: {"model": m, "cells": {}} for m in models}
    gaps = [i for i in indicators if i.get("model") in rows and i["indicator"] != "attack-success reduction"]
    if gaps:
        key = f"{cfg.gap.metric if cfg.gap else 'gap'} gap"
        columns.append({"key": key, "label": f"{cfg.gap.metric if cfg.gap else 'gap'} vs {cfg.baseline}",
                        "short": key, "kind": "gap", "target": gaps[0]["target"]})
        for item in gaps:
            rows[item["model"]]["cells"][key] = _cell(item.get("value"), item.get("ci95"), item["status"],
                                                      item.get("detail", ""))
    for entry in attack_entries(agg):
        if is_control(run, entry):
            continue
        items = [i for i in indicators if i.get("entry") == entry and i.get("model") in rows
                 and i["indicator"] == "attack-success reduction"]
        if not items:
            continue
        control = next((i.get("control_entry") for i in items if i.get("control_entry")), None)
        columns.append({"key": entry, "label": f"{entry}: {cfg.attack_metric} reduction vs {cfg.baseline}",
                        "short": f"{entry}: reduction", "kind": "reduction", "control": control,
                        "target": items[0]["target"]})
        for item in items:
            rows[item["model"]]["cells"][entry] = _cell(item.get("value"), item.get("ci95"), item["status"],
                                                        item.get("detail", ""), item.get("control_value"))
    return {"source": "indicators", "columns": columns,
            "rows": [rows[m] for m in models if rows[m]["cells"]]}


def answer_table(agg: Aggregate, indicators: list[dict[str, Any]],
             primary: dict[str, Any] | list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The headline table: from the primary endpoints when the run has them (``primary``: the endpoints, or the
    family ``{"endpoints": [...], ...}`` as final_results.json holds it; each endpoint names its ``model``,
    ``reference``, ``entry``, ``metric`` and carries ``effect``, ``ci`` and ``status``), else from the indicators."""
    if isinstance(primary, dict):
        primary = primary.get("endpoints")
    if primary:
        table = _from_primary(agg, [p for p in primary if isinstance(p, dict) and p.get("model")])
        if table["rows"]:
            return table
    return _from_indicators(agg, indicators)


#: The figures shown right under the headline (when drawn): the cost, the attacks' success, and their budget.
KEY_FIGURES = ("attack_success_curve.png", "attack_budget.png")


def key_figures(plots: dict[str, dict[str, Any]]) -> list[str]:
    """The three figures that answer the question: the gap metric per model (the first figure, named after the
    metric), success against the threshold, success against the budget; others go to the details."""
    first = next(iter(plots), None)
    names = ([first] if first and first not in KEY_FIGURES else []) + list(KEY_FIGURES)
    return [n for n in names if n in plots and plots[n]["path"]]


def tone(status: str) -> str:
    return "good" if status in GOOD else "bad" if status in BAD else "open"


def answer_text(table: dict[str, Any]) -> list[str]:
    """The headline as plain-text lines (one block per model), for the summary and the terminal."""
    if not table["rows"]:
        return ["(no compared models: set `report: {baseline: <model>, compare: [<model>]}` for a headline)"]
    out = []
    for row in table["rows"]:
        out.append(f"  {row['model']}:")
        for col in table["columns"]:
            cell = row["cells"].get(col["key"])
            if cell is None:
                continue
            target = f" (target {col['target']})" if col.get("target") else ""
            control = (f"; its control {col.get('control')}: {_pct(cell['control_value'])}"
                       if cell.get("control_value") is not None else "")
            text = cell["text"] or "no value"
            out.append(f"    {col['label']}: {text}{control}{target} -> {cell['status'].upper()}")
    return out
