"""The suite's primary endpoints (``report.primary``): the comparisons that answer its question, judged as one family.

Each endpoint compares ``metric`` of ``entry`` on ``model`` with ``reference`` (paired: the same seeds and examples),
as the relative effect ``model / reference - 1`` (``min_effect`` is a fraction of the reference's value) with the
absolute difference beside it. Multiplicity (``report.multiplicity``): ``holm`` sorts the endpoints by their p-value
(of "no difference", two-sided, from the same paired replicates as the interval) and gives the i-th of m the level
alpha / (m - i + 1), stopping at the first that does not reject; its interval is at that level, so an interval that
excludes 0 and a rejection go together. ``bonferroni`` gives every endpoint alpha / m; ``none`` alpha.

Verdicts: ``effect as hoped`` (rejected, in ``direction``), ``opposite effect`` (rejected, the other way), ``smaller
than min_effect`` (not rejected, and the adjusted interval lies within +-``min_effect``: any effect is smaller than
the smallest of interest), else ``not settled``; a destroyed arm, an unmatched control, or (``matched``, the
default) a baseline the arm's perplexity is not shown matched to gets none. An attack's
effect has three scales in the toolkit (relative, absolute in nats, log-ratio): each endpoint on one of them shows
the others at the same level with their own verdicts, and says when they disagree.

Every other interval of the report is exploratory: unadjusted, and no answer to the suite's question.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .aggregate import Aggregate
from .arms import DESTROYED, UNMATCHED, destroyed, gap_text, unmatched, unmatched_baseline
from .power import sample_size
from .stats import percentile_interval
from .text import interval, pct, signed
from .verdicts import paired_means

#: The attack toolkit's scales of one effect (``harness.attacks.ATTACK_METRICS``): a primary endpoint on one of them
#: shows the others beside it.
EFFECT_SCALES = ("mean_nll_increase", "mean_relative_increase", "mean_log_ratio")
HOPED, OPPOSITE, SMALL, UNSETTLED = "effect as hoped", "opposite effect", "smaller than min_effect", "not settled"
METHOD_LABELS = {"holm": "Holm-adjusted", "bonferroni": "Bonferroni-adjusted", "none": "unadjusted"}
EXPLORATORY_NOTE = ("exploratory: unadjusted 95% intervals, not part of the primary family (report.primary); they "
                    "describe the run but do not answer the suite's question")


def _p_value(diff: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from paired replicates of the difference: twice the smaller share of
    replicates on either side of 0 (at least one replicate's worth)."""
    diff = diff[np.isfinite(diff)]
    if not len(diff):
        return 1.0
    tail = min(float(np.mean(diff <= 0)), float(np.mean(diff >= 0)))
    return min(1.0, max(2 * tail, 1.0 / len(diff)))


def _levels(p_values: list[float], alpha: float, method: str) -> tuple[list[float], list[bool]]:
    """Per endpoint: the alpha its interval and test use, and whether "no difference" is rejected."""
    m = len(p_values)
    if method == "none":
        return [alpha] * m, [p <= alpha for p in p_values]
    if method == "bonferroni":
        return [alpha / m] * m, [p <= alpha / m for p in p_values]
    order = sorted(range(m), key=lambda i: p_values[i])
    levels, rejected, going = [alpha] * m, [False] * m, True
    for step, i in enumerate(order):
        levels[i] = alpha / (m - step)
        rejected[i] = going and p_values[i] <= levels[i]
        going = rejected[i]
    return levels, rejected


def _verdict(effect_ci: list[float] | None, rejected: bool, direction: str, min_effect: float,
             point: float) -> str:
    if effect_ci is None:
        return UNSETTLED
    if rejected:
        hoped = point < 0 if direction == "decrease" else point > 0
        return HOPED if hoped else OPPOSITE
    lo, hi = effect_ci
    return SMALL if -min_effect < lo and hi < min_effect else UNSETTLED


def _ci(draws: np.ndarray, confidence: float) -> list[float] | None:
    draws = draws[np.isfinite(draws)]
    return list(percentile_interval(draws, confidence)) if len(draws) else None


def _measure(agg: Aggregate, entry: str, model: str, reference: str, metric: str) -> dict[str, Any] | None:
    """Point values and paired replicates of ``metric``: None when either arm lacks it."""
    m, r = agg.find(entry, model), agg.find(entry, reference)
    ms = m.across.get(metric) if m else None
    rs = r.across.get(metric) if r else None
    if ms is None or rs is None or ms.mean is None or rs.mean is None or rs.mean == 0:
        return None
    paired = paired_means(agg, [m, r], metric) if m and r else None
    out: dict[str, Any] = {"model_value": ms.mean, "reference_value": rs.mean, "effect": ms.mean / rs.mean - 1,
                           "difference": ms.mean - rs.mean}
    if paired is not None:
        reps, method = paired
        with np.errstate(divide="ignore", invalid="ignore"):
            out.update(relative_draws=reps[0] / reps[1] - 1, difference_draws=reps[0] - reps[1], ci_method=method)
    return out


def primary_endpoints(agg: Aggregate, checks: dict[str, Any]) -> dict[str, Any]:
    """The primary family with its adjusted intervals and verdicts (plain data for final_results.json and the
    headline), or an empty family with a note when the suite declares none."""
    run, cfg = agg.run, agg.run.config
    alpha = 1 - cfg.confidence
    out: dict[str, Any] = {"multiplicity": cfg.multiplicity, "alpha": alpha, "endpoints": [],
                           "exploratory_note": EXPLORATORY_NOTE}
    if not cfg.primary:
        out["note"] = ("no primary endpoint declared (report.primary): every verdict of this report is exploratory")
        return out
    gone, loose, far = destroyed(checks), unmatched(checks), unmatched_baseline(checks)
    rows, measures = [], []
    for ep in cfg.primary:
        entry = run.resolve_entry(ep.entry) or ep.entry
        row: dict[str, Any] = {"model": ep.model, "reference": ep.reference, "entry": entry, "metric": ep.metric,
                               "direction": ep.direction, "min_effect": ep.min_effect}
        measure = _measure(agg, entry, ep.model, ep.reference, ep.metric)
        hit = [m for m in (ep.model, ep.reference) if m in gone]
        if hit:
            row.update(status=DESTROYED, detail=f"{' and '.join(hit)} destroyed (perplexity above the ceiling): no "
                                                "verdict")
        elif ep.matched and (ep.model, ep.reference) in loose:
            row.update(status=UNMATCHED, detail=f"'{ep.reference}' is a matched control not matched in perplexity "
                                                "on the test set: no verdict")
        elif ep.matched and (ep.model, ep.reference) in far:
            row.update(status=UNMATCHED, detail=f"not matched in perplexity to the baseline '{ep.reference}' "
                       f"({gap_text(far[ep.model, ep.reference])}): the difference mixes the arm's change with its "
                       "damage, no verdict (`matched: false` in report.primary judges the total effect)")
        elif measure is None:
            row.update(status="missing", detail=f"{entry}.{ep.metric} did not finish on both models")
        if measure is not None:
            row.update({k: v for k, v in measure.items() if not k.endswith("_draws")})
        rows.append(row)
        measures.append(measure)
    # The family: endpoints that can be judged (the others keep their status and take no part in the adjustment).
    judged = [i for i, row in enumerate(rows) if "status" not in row and "difference_draws" in (measures[i] or {})]
    p_values = [_p_value(measures[i]["difference_draws"]) for i in judged]
    levels, rejected = _levels(p_values, alpha, cfg.multiplicity) if judged else ([], [])
    for j, i in enumerate(judged):
        row, measure, ep = rows[i], measures[i], cfg.primary[i]
        confidence = 1 - levels[j]
        ci = _ci(measure["relative_draws"], confidence)
        status = _verdict(ci, rejected[j], ep.direction, ep.min_effect, row["effect"])
        row.update(p_value=p_values[j], level=levels[j], confidence=confidence, rejected=rejected[j], ci=ci,
                   difference_ci=_ci(measure["difference_draws"], confidence), status=status,
                   beyond_min_effect=bool(ci is not None and (ci[1] < -ep.min_effect if ep.direction == "decrease"
                                                              else ci[0] > ep.min_effect)))
        row["scales"] = _other_scales(agg, row, ep, confidence)
        disagree = [s for s in row["scales"] if s.get("status") not in (None, status)]
        if disagree:
            row["disagreement"] = (f"{ep.metric} says {status}, " + ", ".join(f"{s['metric']} says {s['status']}"
                                                                            for s in disagree))
    # Each endpoint's sample and power, at the strictest level of the family (Bonferroni's alpha / m: what Holm
    # asks of the first endpoint it judges), so "not settled at N" comes with what N the family needed.
    strictest = alpha / max(1, len(judged))
    for row, ep in zip(rows, cfg.primary):
        row.setdefault("status", UNSETTLED)
        row["sample"] = sample_size(agg, row["entry"], ep.model, ep.reference, ep.metric, ep.min_effect,
                                    alpha=strictest)
    out["endpoints"] = rows
    out["family_size"] = len(judged)
    return out


def _other_scales(agg: Aggregate, row: dict[str, Any], ep: Any, confidence: float) -> list[dict[str, Any]]:
    """The same comparison on the toolkit's other scales of an attack's effect, at the endpoint's level (the verdict
    rule: interval of the difference off 0, in which direction)."""
    if ep.metric not in EFFECT_SCALES:
        return []
    out = []
    for metric in EFFECT_SCALES:
        if metric == ep.metric:
            continue
        measure = _measure(agg, row["entry"], ep.model, ep.reference, metric)
        if measure is None or "difference_draws" not in measure:
            continue
        ci = _ci(measure["relative_draws"], confidence)
        diff_ci = _ci(measure["difference_draws"], confidence)
        rejected = diff_ci is not None and (diff_ci[0] > 0 or diff_ci[1] < 0)
        out.append({"metric": metric, "model_value": measure["model_value"],
                    "reference_value": measure["reference_value"], "effect": measure["effect"],
                    "difference": measure["difference"], "ci": ci, "difference_ci": diff_ci,
                    "status": _verdict(ci, rejected, ep.direction, ep.min_effect, measure["effect"])})
    return out


def flag_scale_disagreements(rows: list[dict[str, Any]], *keys: str) -> None:
    """Rows that compare the same arms (equal ``keys``) on different scales of an attack's effect
    (:data:`EFFECT_SCALES`) and reach different verdicts get a ``scales_disagree`` note, on each of them."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("metric") in EFFECT_SCALES and "ci95" in row:
            groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    for group in groups.values():
        said = [r.get("withheld_status") or r["status"] for r in group]  # a withheld verdict still disagrees
        if len(set(said)) > 1:
            note = ", ".join(f"{r['metric']} says {v}" for r, v in zip(group, said))
            for r in group:
                r["scales_disagree"] = note


def mark_exploratory(*row_lists: list[dict[str, Any]]) -> None:
    """Label every row outside the primary family: its interval is exploratory."""
    for rows in row_lists:
        for row in rows:
            row["exploratory"] = True


def primary_lines(primary: dict[str, Any]) -> list[str]:
    """The summary's headline: the primary endpoints' verdicts, alone."""
    method = METHOD_LABELS[primary["multiplicity"]]
    if not primary["endpoints"]:
        return ["Primary endpoints: none declared (report.primary); every verdict below is exploratory."]
    out = [f"Primary endpoints ({method} family of {primary.get('family_size', 0)}; relative effect = model / "
           "reference - 1, absolute = model - reference):"]
    for row in primary["endpoints"]:
        who = (f"{row['model']} vs {row['reference']}, {row['entry']}.{row['metric']} (hoped: {row['direction']}, "
               f"min effect {row['min_effect']:.0%})")
        if "ci" not in row:
            out.append(f"  - {who}: {row['status'].upper()}" + (f" ({row['detail']})" if row.get("detail") else ""))
            continue
        ci, dci = row["ci"], row["difference_ci"]
        rel = pct(row["effect"]) + (f" {interval(ci)}" if ci else "")
        ab = signed(row["difference"]) + (f" {interval(dci, signed)}" if dci else "")
        out.append(f"  - {who}: relative {rel}, absolute {ab} at {row['confidence']:.1%} "
                   f"(p = {row['p_value']:.3g}) -> {row['status'].upper()}")
        for s in row.get("scales", []):
            sci = s["ci"]
            out.append(f"      {s['metric']}: relative {pct(s['effect'])}"
                       + (f" {interval(sci)}" if sci else "")
                       + f", model - reference {signed(s['difference'])} -> {s['status']}")
        if row.get("disagreement"):
            out.append(f"      the scales disagree: {row['disagreement']}")
        if sample := sample_text(row):
            out.append(f"      {sample}")
        out += [f"      WARNING {w}" for w in row.get("masking_warnings", [])]  # harness._engine.report.masking
    return out


def sample_text(row: dict[str, Any]) -> str:
    """An endpoint's sample in one sentence: N = documents x seeds, the seed-to-seed spread of the paired difference,
    the power it had and what the declared power needs ("not settled at N = ..., power ..." when unsettled)."""
    s = row.get("sample") or {}
    if s.get("status") != "estimated":
        return ""
    seeds = sorted(s["per_seed_difference"].items(), key=lambda kv: (not kv[0].isdigit(), int(kv[0]) if kv[0].isdigit()
                                                                     else 0, kv[0]))
    spread = ", ".join(f"{seed}: {v:+.3g}" for seed, v in seeds)
    needed = {k: v for k, v in sorted(s["needed"].items(), key=lambda kv: int(kv[0])) if v}
    plan = (", ".join(f"{k} seed{'s' if k != '1' else ''} x {v}" for k, v in list(needed.items())[:3]) + " documents"
            if needed else "more than 10 seeds (the seed-to-seed spread alone exceeds the effect at fewer)")
    n = f"N = {s['documents']} documents x {s['seeds']} seed{'s' if s['seeds'] != 1 else ''}"
    head = f"not settled at {n}" if row["status"] == UNSETTLED else n
    return (f"{head}, power {s['current_power']:.0%} to see a {row['min_effect']:.0%} effect at alpha "
            f"{s['alpha']:.3g}; paired difference by seed {spread}"
            + (f" (SD {s['seed_sd']:.3g})" if s.get("seed_sd") is not None else "")
            + f"; {s['power']:.0%} power needs {plan}"
            + ("" if s["tau_known"] else " (seed-to-seed variance unknown with one seed, taken as 0)"))

