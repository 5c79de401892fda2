"""How many documents and seeds each primary endpoint needs (``harness power RUN_DIR``), from a finished (pilot) run.

For an endpoint (``metric`` of ``entry``, ``model`` against ``reference``) whose metric is a per-example mean: the
paired per-example differences ``d = model - reference`` (records paired by id within a seed) give the example-level
SD ``sigma`` (pooled over seeds) and, with two or more seeds, the seed-level variance of the difference beyond it
``tau^2 = max(0, var(per-seed means) - sigma^2 / n)`` (one seed: unknown, taken as 0 and said). The smallest
effect of interest is ``delta = min_effect * |reference's mean|``. A two-sided test at ``alpha`` (the report's
``1 - confidence``) has power ``1 - beta`` when ``z * sqrt(tau^2 / k + sigma^2 / (k n)) <= delta`` with
``z = z(1 - alpha/2) + z(1 - beta)``, so ``k`` seeds need ``n = sigma^2 / (k (delta/z)^2 - tau^2)`` documents each
(none suffice when ``k (delta/z)^2 <= tau^2``); with ``tau = 0`` it is ``n k = (z sigma / delta)^2`` documents x
seeds. It assumes every seed draws its own documents: with the same documents at every seed only documents count
against ``sigma``.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

import numpy as np

from .aggregate import Aggregate
from .stats import aligned_columns, example_rows, statistic

SEED_COUNTS = (1, 2, 3, 5, 10)


def _differences(agg: Aggregate, entry: str, model: str, reference: str,
                 metric: str) -> tuple[dict[str, np.ndarray], str | None]:
    """Per shared seed (its label), the paired per-example differences of ``metric``'s field; or a reason there are
    none."""
    m, r = agg.find(entry, model), agg.find(entry, reference)
    if m is None or r is None:
        return {}, f"'{entry}' did not run on both models"
    if not m.done or not r.done:
        return {}, f"'{entry}' did not finish on both models"
    spec = m.spec(metric)
    if spec is None or spec.field is None or spec.aggregation != "mean" or statistic(spec) is None:
        return {}, f"{metric} is not a per-example mean (its declaration has no field with aggregation: mean)"
    stat = statistic(spec)
    ref = {str(s.seed): s for s in r.done}
    out = {}
    for s in m.done:
        other = ref.get(str(s.seed))
        if other is None:
            continue
        cols = aligned_columns(stat, [example_rows(spec, s.records), example_rows(spec, other.records)])
        if cols is None:
            continue
        field = spec.field
        if spec.threshold is not None:
            out[str(s.seed)] = (cols[0][field] > spec.threshold).astype(float) - (cols[1][field] > spec.threshold)
        else:
            out[str(s.seed)] = cols[0][field] - cols[1][field]
    return out, None if out else "no examples the two models share (records paired by id)"


def documents_needed(sigma: float, tau2: float, delta: float, seeds: int, z: float) -> int | None:
    """Documents per seed for the power that ``z`` encodes; None when no number of documents suffices."""
    room = seeds * (delta / z) ** 2 - tau2
    if room <= 0:
        return None
    return max(2, math.ceil(sigma ** 2 / room))


def sample_size(agg: Aggregate, entry: str, model: str, reference: str, metric: str, min_effect: float,
                power: float = 0.80, alpha: float | None = None) -> dict[str, Any]:
    """One comparison's sample, its seed-to-seed spread and its power: documents and seeds used, the mean paired
    difference per seed (and their SD), the power the run had to see ``min_effect`` and the documents x seeds that
    ``power`` needs, two-sided at ``alpha`` (default: the report's ``1 - confidence``); ``status``: ``estimated``,
    or why not."""
    alpha = 1 - agg.run.config.confidence if alpha is None else alpha
    normal = NormalDist()
    z = normal.inv_cdf(1 - alpha / 2) + normal.inv_cdf(power)
    row: dict[str, Any] = {"min_effect": min_effect, "power": power, "alpha": alpha, "z": z}
    diffs, why = _differences(agg, entry, model, reference, metric)
    ref_group = agg.find(entry, reference)
    ref_summary = ref_group.across.get(metric) if ref_group else None
    if why or ref_summary is None or ref_summary.mean is None or ref_summary.mean == 0:
        row["status"] = why or f"no reference value of {metric}"
        return row
    n = [len(d) for d in diffs.values()]
    dof = sum(k - 1 for k in n)
    sigma2 = sum(float(np.var(d, ddof=1)) * (len(d) - 1) for d in diffs.values() if len(d) > 1) / dof if dof else 0.0
    per_seed = {seed: float(d.mean()) for seed, d in diffs.items()}
    means = np.array(list(per_seed.values()))
    k = len(diffs)
    tau2 = max(0.0, float(np.var(means, ddof=1)) - sigma2 / float(np.mean(n))) if k >= 2 else 0.0
    delta = min_effect * abs(ref_summary.mean)
    sigma = math.sqrt(sigma2)
    se = math.sqrt(tau2 / k + sigma2 / (k * float(np.mean(n))))
    row.update(status="estimated", seeds=k, documents=int(np.mean(n)), examples=int(sum(n)), sigma=sigma,
               tau=math.sqrt(tau2), tau_known=k >= 2, delta=delta, reference_value=ref_summary.mean,
               observed_difference=float(np.mean(means)), per_seed_difference=per_seed,
               seed_sd=float(np.std(means, ddof=1)) if k >= 2 else None,
               current_power=(normal.cdf(delta / se - normal.inv_cdf(1 - alpha / 2)) if se > 0 else 1.0),
               documents_x_seeds=math.ceil((z * sigma / delta) ** 2) if delta > 0 else None,
               needed={str(s): documents_needed(sigma, tau2, delta, s, z) for s in SEED_COUNTS})
    return row


def power_table(agg: Aggregate, power: float = 0.80) -> list[dict[str, Any]]:
    run = agg.run
    rows = []
    for ep in run.config.primary:
        entry = run.resolve_entry(ep.entry) or ep.entry
        rows.append({"model": ep.model, "reference": ep.reference, "entry": entry, "metric": ep.metric,
                     **sample_size(agg, entry, ep.model, ep.reference, ep.metric, ep.min_effect, power)})
    return rows


def power_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["No primary endpoint declared (report.primary): nothing to size."]
    out = []
    for r in rows:
        head = (f"{r['model']} vs {r['reference']}, {r['entry']}.{r['metric']} "
                f"(smallest effect of interest {r['min_effect']:.0%} of the reference)")
        if r["status"] != "estimated":
            out.append(f"{head}: cannot estimate: {r['status']}")
            continue
        tau = (f"{r['tau']:.4g}" if r["tau_known"] else "unknown with one seed, taken as 0")
        needed = ", ".join(f"{s} seed{'s' if s != '1' else ''}: " + (f"{n} documents" if n else "no number suffices")
                           for s, n in r["needed"].items())
        out += [head + ":",
                f"  from {r['documents']} documents x {r['seeds']} seed(s): per-example SD of the paired difference "
                f"{r['sigma']:.4g}, seed-level SD {tau}; delta = {r['min_effect']:.0%} x {r['reference_value']:.4g} "
                f"= {r['delta']:.4g}; observed difference {r['observed_difference']:+.4g}; power now "
                f"{r['current_power']:.0%}",
                f"  for {r['power']:.0%} power at {r['alpha']:.0%} two-sided: documents x seeds = "
                f"(z sigma / delta)^2 = {r['documents_x_seeds']} (z = {r['z']:.3f}, no seed variance); per seed "
                f"count: {needed}"]
    return out
