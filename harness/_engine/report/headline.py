"""The HTML report's headline block: the primary endpoints (the only verdicts on the suite's question), which arms
may be compared, and the randomness each comparison shares (its own module: html.py lays out the page, primary.py
computes the family)."""

from __future__ import annotations

from typing import Any

from .html import _e, _table
from .primary import EXPLORATORY_NOTE, HOPED, METHOD_LABELS, OPPOSITE, SMALL, sample_text
from .text import interval, pct, signed


def headline_html(primary: dict[str, Any], arms: dict[str, Any], randomness: list[dict[str, Any]]) -> str:
    """The HTML report's headline: the primary endpoints (the only verdicts on the suite's question), which arms
    may be compared, and the randomness each comparison shares."""
    method = METHOD_LABELS[primary["multiplicity"]]
    out = ["<h2>Primary endpoints</h2>"]
    if not primary["endpoints"]:
        out.append(f"<p>{_e(primary.get('note', ''))}</p>")
    else:
        rows, classes = [], []
        for row in primary["endpoints"]:
            ci, dci = row.get("ci"), row.get("difference_ci")
            scales = "; ".join(f"{s['metric']}: {pct(s['effect'])} -> {s['status']}" for s in row.get("scales", []))
            note = " ".join(x for x in (row.get("detail"), scales, row.get("disagreement") and
                                        f"the scales disagree: {row['disagreement']}", sample_text(row)) if x)
            rows.append([_e(f"{row['model']} vs {row['reference']}"), _e(f"{row['entry']}.{row['metric']}"),
                         _e(f"{row['direction']}, {row['min_effect']:.0%}"),
                         _e(pct(row["effect"])) if "effect" in row else "&mdash;",
                         _e(interval(ci)),
                         _e(signed(row["difference"])) if "difference" in row else "&mdash;",
                         _e(interval(dci, signed)),
                         _e(f"{row['confidence']:.1%}") if "confidence" in row else "",
                         _e(f"{row['p_value']:.3g}") if "p_value" in row else "",
                         f"<b>{_e(row['status'])}</b>", f'<div class="text">{_e(note)}</div>'])
            classes.append({HOPED: "met", OPPOSITE: "notmet", SMALL: "unsettled"}.get(row["status"], "na"))
        out.append(f"<p>{_e(method)} family; relative effect = model / reference - 1, absolute = model - "
                   "reference; each interval at its step's level.</p>")
        out.append(_table(["comparison", "metric", "hoped, min effect", "relative", "interval", "absolute",
                           "interval", "level", "p", "verdict", "note"], rows, classes))
    out.append(f'<p class="note">Every other interval of this report is {_e(EXPLORATORY_NOTE)}.</p>')
    arm_rows = [[_e(a["model"]), _e(f"{a['perplexity']:.4g}") if "perplexity" in a else "&mdash;",
                 _e(f"{a['ceiling']:.4g}") if a.get("ceiling") else "&mdash;", f"<b>{_e(a['status'])}</b>"]
                for a in arms["arms"]]
    arm_rows += [[_e(f"{p['model']} vs control {p['control']}"), "", "", f"<b>{_e(p['status'])}</b>"]
                 for p in arms["matched_pairs"]]
    arm_rows += [[_e(f"{p['model']} vs baseline {p['control']}"), _e(pct(p["value"])), "",
                  f"<b>{_e(p['status'])}</b>"] for p in arms.get("baseline_pairs", [])]
    out += ["<h3>Arms that may be compared</h3>", _table(["model", "perplexity", "ceiling", "status"], arm_rows)]
    if randomness:
        out += ["<h3>Randomness each comparison shares</h3>",
                _table(["comparison", "data order", "documents", "attack streams", "not shared"],
                       [[_e(f"{r['model']} vs {r['reference']}"), _e(r["data_order"]), _e(r["documents"]),
                         _e(r["attack_streams"]), _e(", ".join(r["not_shared"]))] for r in randomness])]
    return "\n".join(out)
