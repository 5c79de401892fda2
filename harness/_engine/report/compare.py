"""``harness compare RUN_A RUN_B``: every metric of two runs side by side, per entry, model and seed.

A stage of A and the stage of B with the same section, entry, model and seed are compared metric by metric:
their values and the difference B - A. Where the two stages hold per-example records of the same examples (paired
by record ``id``: the runs share seeds and data) and the records reproduce both values, the difference gets a paired
bootstrap 95% interval over the shared examples (each resample draws the same examples for both runs), so a change
of method is judged on the same documents. Otherwise the difference has no interval (a single seed's values are
compared as they are). Stages only one run finished are listed as such.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from .aggregate import Aggregate, aggregate
from .collect import StageData, load_run
from .declared import PluginResolver
from .stats import aligned_columns, example_rows, paired_bootstrap, percentile_interval, rng_for, statistic

COLUMNS = ["section", "entry", "model", "seed", "metric", "a", "b", "difference", "ci_low", "ci_high",
           "paired_examples"]


def _stage_map(agg: Aggregate) -> dict[tuple[str, str, str, str], StageData]:
    return {(s.section, s.entry, s.model, "" if s.seed is None else str(s.seed)): s for s in agg.run.stages}


def _paired(agg: Aggregate, a: StageData, b: StageData, metric: str, va: float, vb: float,
            n_boot: int) -> tuple[list[float], int] | None:
    """The paired bootstrap interval of B - A over the examples both stages hold, and how many they share."""
    group = next((g for g in agg.groups if a in g.stages), None)
    spec = group.spec(metric) if group is not None else None
    stat = statistic(spec) if spec is not None else None
    if spec is None or stat is None:
        return None
    aligned = aligned_columns(stat, [example_rows(spec, a.records), example_rows(spec, b.records)])
    if aligned is None:
        return None
    # The shared examples must give each run's reported value, else they measure something else: no pairing.
    for columns, value in zip(aligned, (va, vb)):
        full = float(stat.compute({f: c[None, :] for f, c in columns.items()})[0])
        if not np.isclose(full, value, rtol=1e-6, atol=1e-9):
            return None
    reps = paired_bootstrap(stat, [aligned], n_boot, rng_for(0, "compare", a.id, metric))
    draws = reps[1] - reps[0]
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return None
    n = len(next(iter(aligned[0].values())))
    return list(percentile_interval(draws, 0.95)), n


def compare_runs(run_a: str | Path, run_b: str | Path, plugins: PluginResolver | None = None,
                 n_boot: int = 2000) -> dict[str, Any]:
    """Rows (one per stage and metric both runs report) and the stages only one of them finished."""
    agg_a, agg_b = aggregate(load_run(run_a), plugins), aggregate(load_run(run_b), plugins)
    stages_a, stages_b = _stage_map(agg_a), _stage_map(agg_b)
    rows: list[dict[str, Any]] = []
    only: dict[str, list[str]] = {"a": [], "b": []}
    for key, a in stages_a.items():
        b = stages_b.get(key)
        if b is None or not (a.done and b.done):
            if a.done:
                only["a"].append(a.id)
            continue
        sa, sb = a.scalars(), b.scalars()
        for metric in [m for m in sa if m in sb]:
            va, vb = sa[metric], sb[metric]
            row: dict[str, Any] = dict(zip(("section", "entry", "model", "seed"), key), metric=metric, a=va, b=vb,
                                       difference=None if va is None or vb is None else vb - va,
                                       ci95=None, paired_examples=0)
            if va is not None and vb is not None and a.records and b.records:
                paired = _paired(agg_a, a, b, metric, va, vb, n_boot)
                if paired is not None:
                    row["ci95"], row["paired_examples"] = paired
            rows.append(row)
    only["b"] = [b.id for key, b in stages_b.items() if b.done and not (key in stages_a and stages_a[key].done)]
    return {"a": str(agg_a.run.run_dir), "b": str(agg_b.run.run_dir), "rows": rows, "only": only}


def comparison_csv(result: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in result["rows"]:
        ci = row["ci95"]
        writer.writerow({**{k: row[k] for k in COLUMNS if k in row}, "ci_low": ci[0] if ci else "",
                         "ci_high": ci[1] if ci else "",
                         **{k: "" if row[k] is None else row[k] for k in ("a", "b", "difference")}})
    return buffer.getvalue()


def comparison_text(result: dict[str, Any], changed_only: bool = False) -> str:
    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.6g}"

    lines = [f"A: {result['a']}", f"B: {result['b']}", "",
             f"{'stage':<44} {'metric':<34} {'A':>12} {'B':>12} {'B - A':>12}  paired 95% CI of B - A"]
    shown = 0
    for row in result["rows"]:
        if changed_only and row["difference"] == 0:
            continue
        stage = "/".join(x for x in (row["section"], row["entry"], row["model"],
                                     f"s{row['seed']}" if row["seed"] else "") if x)
        ci = row["ci95"]
        ci_text = (f"[{ci[0]:.4g}, {ci[1]:.4g}] over {row['paired_examples']} shared examples" if ci else
                   "no pairing (no shared example records)")
        lines.append(f"{stage:<44} {row['metric']:<34} {num(row['a']):>12} {num(row['b']):>12} "
                     f"{num(row['difference']):>12}  {ci_text}")
        shown += 1
    same = sum(1 for r in result["rows"] if r["difference"] == 0)
    lines += ["", f"{len(result['rows'])} metrics compared, {same} identical"
                  + (f" (not shown: {len(result['rows']) - shown})" if shown < len(result["rows"]) else "")]
    for side in ("a", "b"):
        if result["only"][side]:
            lines.append(f"finished only in {side.upper()}: {', '.join(result['only'][side])}")
    return "\n".join(lines) + "\n"
