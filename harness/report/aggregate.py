"""Aggregation: every metric per model x seed, then across seeds (mean, std, bootstrap interval); Table 7 cells;
the success indicators (perplexity gap vs the baseline, attack-success reduction), computed and judged, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .collect import RunData, StageData
from .stats import (across_seeds_bootstrap, bootstrap_examples, example_columns, mean_std, percentile_interval,
                    reproduces, rng_for)


def seed_label(seed: int | None) -> str:
    return "unseeded" if seed is None else str(seed)


@dataclass
class MetricSummary:
    """One metric of one (entry, model) group, across the seeds that finished."""

    mean: float | None
    std: float | None
    n: int
    ci: tuple[float, float] | None
    ci_method: str | None
    values: dict[str, float]  # seed label -> value
    #: Bootstrap replicates of the mean (kept in memory for derived intervals, not written).
    replicates: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95": list(self.ci) if self.ci else None,
                "ci_method": self.ci_method, "values": self.values}


@dataclass
class Group:
    """The stages of one entry on one model (one per seed, or a single unseeded one)."""

    section: str
    entry: str
    plugin: str
    model: str
    stages: list[StageData]
    per_seed: dict[str, dict[str, Any]] = field(default_factory=dict)
    across: dict[str, MetricSummary] = field(default_factory=dict)

    @property
    def done(self) -> list[StageData]:
        return [s for s in self.stages if s.done]

    @property
    def missing(self) -> list[StageData]:
        return [s for s in self.stages if not s.done]

    def as_dict(self) -> dict[str, Any]:
        return {"section": self.section, "entry": self.entry, "plugin": self.plugin, "model": self.model,
                "stages": [s.id for s in self.stages],
                "missing": [{"id": s.id, "status": s.status} for s in self.missing],
                "per_seed": self.per_seed, "across_seeds": {m: s.as_dict() for m, s in self.across.items()}}


def build_groups(run: RunData) -> list[Group]:
    groups: dict[tuple[str, str, str], Group] = {}
    for s in run.stages:
        key = (s.section, s.entry, s.model)
        if key not in groups:
            groups[key] = Group(s.section, s.entry, s.plugin, s.model, [])
        groups[key].stages.append(s)
    return list(groups.values())


def aggregate_group(group: Group, run: RunData) -> None:
    cfg = run.config
    replicates: dict[str, dict[str, np.ndarray | None]] = {}
    for s in group.stages:
        label = seed_label(s.seed)
        if not s.done:
            group.per_seed[label] = {"stage": s.id, "status": s.status}
            continue
        scalars = s.scalars()
        intervals: dict[str, list[float]] = {}
        for metric, value in scalars.items():
            reps = None
            found = example_columns(metric, s.records) if value is not None else None
            if found is not None and reproduces(*found, value):
                rng = rng_for(cfg.bootstrap_seed, s.id, metric)
                reps = bootstrap_examples(*found, cfg.bootstrap_samples, rng)
                intervals[metric] = list(percentile_interval(reps, cfg.confidence))
            replicates.setdefault(metric, {})[label] = reps
        group.per_seed[label] = {"stage": s.id, "status": "done", "metrics": scalars, "ci95": intervals,
                                 "duration_s": (s.result or {}).get("duration_s")}
    metrics = list(dict.fromkeys(m for s in group.done for m in s.scalars()))
    for metric in metrics:
        values = {seed_label(s.seed): s.scalars().get(metric) for s in group.done}
        values = {k: v for k, v in values.items() if v is not None}
        mean, std = mean_std(list(values.values()))
        reps, method = across_seeds_bootstrap(list(values.values()),
                                              [replicates.get(metric, {}).get(k) for k in values],
                                              cfg.bootstrap_samples,
                                              rng_for(cfg.bootstrap_seed, group.section, group.entry, group.model,
                                                      metric, "seeds"))
        ci = percentile_interval(reps, cfg.confidence) if reps is not None else None
        group.across[metric] = MetricSummary(mean, std, len(values), ci, method, values, reps)


@dataclass
class Aggregate:
    run: RunData
    groups: list[Group]

    def find(self, entry: str | None, model: str, sections: tuple[str, ...] = ("metrics", "attacks")) -> Group | None:
        if entry is None:
            return None
        for g in self.groups:
            if g.entry == entry and g.model == model and g.section in sections:
                return g
        return None

    def evaluation_groups(self) -> list[Group]:
        return [g for g in self.groups if g.section in ("metrics", "attacks")]


def aggregate(run: RunData) -> Aggregate:
    groups = build_groups(run)
    for g in groups:
        aggregate_group(g, run)
    return Aggregate(run, groups)


# -- Table 7 -------------------------------------------------------------------------------------------------------

def table_models(run: RunData) -> list[str]:
    base = run.config.baseline
    return ([base] if base in run.models else []) + [m for m in run.models if m != base]


def summary_cell(agg: Aggregate, entry: str | None, model: str, metric: str, scale: float = 1.0) -> dict[str, Any]:
    """One table cell: a metric's mean and std over seeds (scaled), or a status saying why there is no number."""
    group = agg.find(entry, model)
    cell: dict[str, Any] = {"entry": entry, "metric": metric}
    if entry is None:
        cell["status"] = "not in suite"
    elif group is None:
        cell["status"] = "not run"
    elif not group.done:
        cell["status"] = "missing"
    elif metric not in group.across or group.across[metric].mean is None:
        cell["status"] = "no value"
    else:
        s = group.across[metric]
        expected = len(group.stages)
        cell.update(status="done", mean=s.mean * scale,  # type: ignore[operator]
                    std=None if s.std is None else s.std * scale,
                    ci95=None if s.ci is None else [s.ci[0] * scale, s.ci[1] * scale],
                    n=s.n, expected=expected, partial=s.n < expected)
    return cell


def table7(agg: Aggregate) -> dict[str, Any]:
    """Rows: models; cells: mean and std over seeds (scaled), or a status saying why there is no number."""
    run = agg.run
    columns = [c.model_dump() for c in run.config.table7]
    rows = [{"model": model, "baseline": model == run.config.baseline,
             "cells": [summary_cell(agg, run.resolve_entry(col.entry), model, col.metric, col.scale)
                       for col in run.config.table7]}
            for model in table_models(run)]
    return {"columns": columns, "rows": rows, "n_seeds": len(run.seeds)}


#: The attack table's columns: what every attack plugin reports (the shared summary of harness.scoring).
ATTACK_COLUMNS = [{"label": "Success (%)", "metric": "success_rate", "scale": 100, "digits": 1},
                  {"label": "NLL incr. (%)", "metric": "mean_relative_increase", "scale": 100, "digits": 1},
                  {"label": "Median NLL incr. (%)", "metric": "median_relative_increase", "scale": 100, "digits": 1},
                  {"label": "Queries / example", "metric": "mean_queries", "scale": 1, "digits": 1}]


def is_transfer(run: RunData, entry: str) -> bool:
    return any("transfer" in s.metrics for s in run.stages if s.entry == entry and s.done)


def is_control(run: RunData, entry: str) -> bool:
    return any(s.done and s.result and s.result.get("control") for s in run.stages if s.entry == entry)


def attack_table(agg: Aggregate) -> dict[str, Any]:
    """Every attack of the suite (HotFlip, UAT, TextAttack's, controls...) on every model, side by side, with the
    same columns: one row per (attack, model)."""
    run = agg.run
    rows = []
    for section, entry, plugin in run.entries():
        if section != "attacks" or is_transfer(run, entry):
            continue
        for model in table_models(run):
            if agg.find(entry, model) is None:
                continue
            rows.append({"attack": entry, "plugin": plugin, "control": is_control(run, entry), "model": model,
                         "baseline": model == run.config.baseline,
                         "cells": [summary_cell(agg, entry, model, c["metric"], c["scale"]) for c in ATTACK_COLUMNS]})
    return {"columns": ATTACK_COLUMNS, "rows": rows, "n_seeds": len(run.seeds)}


# -- success indicators --------------------------------------------------------------------------------------------

def _ratio_interval(num: Any, den: Any, confidence: float, transform) -> list[float] | None:
    """Interval of transform(num / den) from independent bootstrap replicates of both means (different models)."""
    if num.replicates is None or den.replicates is None:
        return None
    n = min(len(num.replicates), len(den.replicates))
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = transform(num.replicates[:n] / den.replicates[:n])
    draws = draws[np.isfinite(draws)]
    return list(percentile_interval(draws, confidence)) if len(draws) else None


def _unsettled(ci: list[float] | None, target: float) -> str | None:
    """A note when the 95% interval holds the target on both sides: met or not, this run does not settle it."""
    if ci is not None and ci[0] < target < ci[1]:
        return f"the 95% interval [{ci[0]:.1%}, {ci[1]:.1%}] contains the target: not settled by this run"
    return None


def compared_models(run: RunData) -> list[str]:
    if run.config.baseline is None:
        return []
    return list(run.config.compare) or [m for m in run.models if m != run.config.baseline]


def indicators(agg: Aggregate) -> list[dict[str, Any]]:
    run, cfg = agg.run, agg.run.config
    out: list[dict[str, Any]] = []
    gap_target = f"< {cfg.perplexity_gap_target:.0%}"
    red_target = f"> {cfg.attack_reduction_target:.0%}"
    compare = compared_models(run)
    if cfg.baseline is None or not compare:
        why = ("the suite names no baseline model (set `report: {baseline: <model>, compare: [<model>]}`)"
               if cfg.baseline is None else "the suite has no model besides the baseline to compare")
        for name, target in (("perplexity gap vs baseline", gap_target), ("attack-success reduction", red_target)):
            out.append({"indicator": name, "status": "not applicable", "target": target, "detail": why})
        return out

    ppl_entry = run.resolve_entry(cfg.perplexity.entry)
    for model in compare:
        item = {"indicator": "perplexity gap vs baseline", "model": model, "baseline": cfg.baseline,
                "entry": ppl_entry, "metric": cfg.perplexity.metric, "target": gap_target}
        b, m = agg.find(ppl_entry, cfg.baseline), agg.find(ppl_entry, model)
        bs = b.across.get(cfg.perplexity.metric) if b else None
        ms = m.across.get(cfg.perplexity.metric) if m else None
        if ppl_entry is None:
            item.update(status="not applicable", detail=f"no metrics entry '{cfg.perplexity.entry}' in the suite")
        elif bs is None or ms is None or bs.mean is None or ms.mean is None or bs.mean <= 0:
            item.update(status="missing", detail="perplexity of the baseline or the model did not finish")
        else:
            gap = ms.mean / bs.mean - 1
            met = gap < cfg.perplexity_gap_target
            ci = _ratio_interval(ms, bs, cfg.confidence, lambda r: r - 1)
            item.update(value=gap, baseline_value=bs.mean, model_value=ms.mean, met=met,
                        status="met" if met else "not met", ci95=ci)
            if note := _unsettled(ci, cfg.perplexity_gap_target):
                item["detail"] = note
        out.append(item)

    attack_entries = [e for sec, e, _ in run.entries() if sec == "attacks" and not is_transfer(run, e)]
    if not attack_entries:
        out.append({"indicator": "attack-success reduction", "status": "not applicable", "target": red_target,
                    "detail": "the suite runs no attack"})
    for entry in attack_entries:
        # A control (random edits at an attack's budget) is shown beside the attacks, but its reduction is a
        # reference for theirs, not a robustness result: it gets no met / not met.
        control = is_control(run, entry)
        for model in compare:
            item = {"indicator": "attack-success reduction", "model": model, "baseline": cfg.baseline,
                    "entry": entry, "metric": cfg.attack_metric, "target": red_target, "control": control}
            b, m = agg.find(entry, cfg.baseline), agg.find(entry, model)
            bs = b.across.get(cfg.attack_metric) if b else None
            ms = m.across.get(cfg.attack_metric) if m else None
            if b is None or m is None:
                item.update(status="not applicable", detail=f"attack '{entry}' does not run on both models")
            elif bs is None or ms is None or bs.mean is None or ms.mean is None:
                item.update(status="missing", detail=f"'{entry}' on the baseline or the model did not finish "
                                                     f"(or reports no {cfg.attack_metric})")
            elif bs.mean <= 0:
                item.update(status="not applicable", baseline_value=bs.mean, model_value=ms.mean,
                            detail=f"the baseline's {cfg.attack_metric} is 0, so there is nothing to reduce")
            else:
                reduction = 1 - ms.mean / bs.mean
                item.update(value=reduction, baseline_value=bs.mean, model_value=ms.mean,
                            ci95=_ratio_interval(ms, bs, cfg.confidence, lambda r: 1 - r))
                if control:
                    item.update(status="control", detail="a control: the reference for the attacks' reduction, "
                                                         "not judged against the target")
                else:
                    met = reduction > cfg.attack_reduction_target
                    item.update(met=met, status="met" if met else "not met")
                    if note := _unsettled(item["ci95"], cfg.attack_reduction_target):
                        item["detail"] = note
            out.append(item)
    return out
