"""Which arms may be compared at all.

A model whose perplexity is above the ceiling (``report.max_perplexity``; default: the perplexity of a uniform guess
over its output vocabulary, which every result records) predicts worse than guessing: it is ``destroyed``, and its
"robustness" is no result, so it gets no robustness verdict. A matched control (``report.matched_controls``) whose
perplexity is not ``matched`` on the test set (the paired interval of the ratio within +-``gap_target``; without
a ``gap_target`` nothing can be shown matched) is ``unmatched`` for that model: the comparison is shown, but used
for no verdict. So is the baseline for a compared model whose perplexity gap indicator (``gap`` below
``gap_target``) is not met, for the primary endpoints that ask a matched reference (``report.primary[].matched``).
"""

from __future__ import annotations

from typing import Any

from .aggregate import Aggregate
from .text import interval, pct

USABLE, DESTROYED, UNKNOWN, UNMATCHED = "usable", "destroyed", "unknown", "unmatched"


def _vocab_size(agg: Aggregate, model: str) -> int | None:
    sizes = {s.result.get("output_vocab_size") for s in agg.run.stages
             if s.model == model and s.done and s.section in ("metrics", "attacks") and s.result}
    sizes.discard(None)
    return int(next(iter(sizes))) if len(sizes) == 1 else None


def arm_checks(agg: Aggregate, matched_rows: list[dict[str, Any]],
               indicators: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model: its perplexity, the ceiling and ``usable`` / ``destroyed`` / ``unknown``; per matched-control pair:
    ``matched`` or ``unmatched`` (from the gap rows of ``versus_matched_controls``); per compared model and the
    baseline: the same from the perplexity gap indicator (where its perplexity was measured)."""
    run, cfg = agg.run, agg.run.config
    ref = cfg.perplexity or cfg.gap
    entry = run.resolve_entry(ref.entry) if ref else None
    arms = []
    for model in run.models:
        row: dict[str, Any] = {"model": model, "entry": entry, "metric": ref.metric if ref else None}
        group = agg.find(entry, model) if entry else None
        summary = group.across.get(ref.metric) if group and ref else None
        vocab = _vocab_size(agg, model)
        ceiling = cfg.max_perplexity if cfg.max_perplexity is not None else vocab
        row.update(ceiling=ceiling, ceiling_source=("report.max_perplexity" if cfg.max_perplexity is not None else
                                                    "uniform guess over the recorded output vocabulary"
                                                    if vocab else None))
        if summary is None or summary.mean is None or ceiling is None:
            row.update(status=UNKNOWN, detail="no perplexity (report.perplexity or report.gap)" if ceiling else
                       "no ceiling: neither report.max_perplexity nor a recorded output vocabulary size")
            if summary is not None and summary.mean is not None:
                row["perplexity"] = summary.mean
        else:
            row["perplexity"] = summary.mean
            row["status"] = DESTROYED if summary.mean > ceiling else USABLE
            if row["status"] == DESTROYED:
                row["detail"] = (f"perplexity {summary.mean:.4g} is above {ceiling:.4g} "
                                 f"({row['ceiling_source']}): worse than guessing, no robustness verdict")
        arms.append(row)
    pairs = []
    for gap in (r for r in matched_rows if r.get("kind") == "gap"):
        matched = gap.get("status") == "matched"
        pairs.append({"model": gap["model"], "control": gap["control_model"],
                      "status": "matched" if matched else UNMATCHED, "gap_status": gap.get("status"),
                      "ci95": gap.get("ci95")})
    baseline_pairs = [{"model": item["model"], "control": item["baseline"],
                       "status": "matched" if item.get("met") else UNMATCHED, "gap_status": item["status"],
                       "value": item["value"], "ci95": item.get("ci95"), "target": item.get("target")}
                      for item in indicators if item.get("kind") == "gap" and "value" in item and "model" in item]
    return {"arms": arms, "matched_pairs": pairs, "baseline_pairs": baseline_pairs}


def destroyed(checks: dict[str, Any]) -> set[str]:
    return {a["model"] for a in checks["arms"] if a["status"] == DESTROYED}


def unmatched(checks: dict[str, Any]) -> set[tuple[str, str]]:
    return {(p["model"], p["control"]) for p in checks["matched_pairs"] if p["status"] == UNMATCHED}


def unmatched_baseline(checks: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, baseline) pairs whose perplexity gap indicator is not met, with that pair's check."""
    return {(p["model"], p["control"]): p for p in checks.get("baseline_pairs", []) if p["status"] == UNMATCHED}


def gap_text(pair: dict[str, Any]) -> str:
    """A pair's perplexity gap as the indicator measured it: ``+2861% [+2700%, +3020%], target < 15%``."""
    ci = pair.get("ci95")
    return (f"perplexity gap {pct(pair['value'])}" + (f" {interval(ci)}" if ci else "")
            + f", target {pair.get('target')}: {pair['gap_status']}")


def withhold_verdicts(checks: dict[str, Any], indicators: list[dict[str, Any]],
                      matched_rows: list[dict[str, Any]]) -> None:
    """Replace the verdict of every robustness comparison of a destroyed arm by ``destroyed``, and of every
    comparison with an unmatched control by ``unmatched`` (numbers and intervals stay, for the reader)."""
    gone, loose = destroyed(checks), unmatched(checks)
    for item in indicators:
        if item.get("indicator") == "attack-success reduction" and not item.get("control"):
            hit = [m for m in (item.get("model"), item.get("baseline")) if m in gone]
            if hit and "value" in item:
                _withhold(item, DESTROYED, f"{' and '.join(hit)} destroyed (perplexity above the ceiling)")
    for row in matched_rows:
        if row.get("kind") == "gap":
            continue
        hit = [m for m in (row["model"], row["control_model"]) if m in gone]
        if hit:
            _withhold(row, DESTROYED, f"{' and '.join(hit)} destroyed (perplexity above the ceiling)")
        elif (row["model"], row["control_model"]) in loose:
            _withhold(row, UNMATCHED, f"control '{row['control_model']}' is not matched in perplexity on the test "
                                      "set: no verdict from this comparison")


def _withhold(item: dict[str, Any], status: str, why: str) -> None:
    item["withheld_status"] = item.get("status")
    item["status"] = status
    if "met" in item:
        item["met"] = False
    item["detail"] = why + (f"; {item['detail']}" if item.get("detail") else "")


def arm_lines(checks: dict[str, Any]) -> list[str]:
    out = []
    for a in checks["arms"]:
        ppl = f"perplexity {a['perplexity']:.4g}" if "perplexity" in a else "perplexity unknown"
        ceiling = f", ceiling {a['ceiling']:.4g}" if a.get("ceiling") else ""
        out.append(f"  - {a['model']}: {ppl}{ceiling} -> {a['status'].upper()}")
    for p in checks["matched_pairs"]:
        out.append(f"  - {p['model']} vs matched control {p['control']}: {p['status'].upper()}"
                   + (f" (perplexity {p['gap_status']})" if p["status"] == UNMATCHED else ""))
    for p in checks.get("baseline_pairs", []):
        out.append(f"  - {p['model']} vs baseline {p['control']}: {p['status'].upper()} ({gap_text(p)})")
    return out
