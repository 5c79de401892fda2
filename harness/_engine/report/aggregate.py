"""Aggregation: every metric per model x seed, then across seeds (mean, std, bootstrap interval); the report tables' cells;
the success indicators (a metric's gap vs the baseline, attack-success reduction), computed and judged, not assumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...api import MetricSpec
from .collect import RunData, StageData
from .config import ReportTable
from .declared import PluginResolver, declared_specs, describe, missing_declared, undeclared
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
    #: What the plugin declared it reports (None: unknown, e.g. the plugin is not installed and the result predates
    #: recorded declarations).
    specs: list[MetricSpec] | None = None
    #: Metrics the report derives from declared curves: the rate at each of ``report.curve_thresholds``.
    derived: list[MetricSpec] = field(default_factory=list)

    def spec(self, metric: str) -> MetricSpec | None:
        """The declaration of ``metric`` (placeholders filled in), or None when undeclared."""
        return describe(self.specs + self.derived, metric) if self.specs is not None else None

    def specs_of_kind(self, kind: str) -> list[MetricSpec]:
        return [s for s in self.specs or [] if s.kind == kind]

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


def curve_specs(curve: MetricSpec, thresholds: list[float]) -> list[MetricSpec]:
    """The rate of a declared curve at each threshold, as metrics of their own (``<curve>@<threshold>``)."""
    return [MetricSpec(f"{curve.name}@{t:g}", f"Success > {t * 100:g}% (%)", field=curve.field, threshold=t,
                       scale=100, digits=1) for t in thresholds]


def curve_values(group: Group, stage: StageData) -> dict[str, float]:
    """The derived curve rates of one stage: read from the stored curve at the threshold (the plugin's own
    number), else computed from the records' field."""
    out: dict[str, float] = {}
    for spec in group.derived:
        curve = next((c for c in group.specs_of_kind("curve") if c.field == spec.field), None)
        stored = stage.metrics.get(curve.name) if curve else None
        if isinstance(stored, dict) and isinstance(stored.get("thresholds"), list):
            rates = next((v for k, v in stored.items() if k != "thresholds" and isinstance(v, list)), [])
            at = [i for i, t in enumerate(stored["thresholds"]) if abs(t - (spec.threshold or 0)) < 1e-9]
            if at and at[0] < len(rates) and isinstance(rates[at[0]], (int, float)):
                out[spec.name] = float(rates[at[0]])
                continue
        found = example_columns(spec, stage.records)
        if found is not None:
            out[spec.name] = float(found[0].compute({f: c[None, :] for f, c in found[1].items()})[0])
    return out


def aggregate_group(group: Group, run: RunData) -> None:
    cfg = run.config
    replicates: dict[str, dict[str, np.ndarray | None]] = {}
    for s in group.stages:
        label = seed_label(s.seed)
        if not s.done:
            group.per_seed[label] = {"stage": s.id, "status": s.status}
            continue
        scalars = {**s.scalars(), **curve_values(group, s)}
        intervals: dict[str, list[float]] = {}
        for metric, value in scalars.items():
            reps = None
            found = example_columns(group.spec(metric), s.records) if value is not None else None
            if found is not None and reproduces(*found, value):
                rng = rng_for(cfg.bootstrap_seed, s.id, metric)
                reps = bootstrap_examples(*found, cfg.bootstrap_samples, rng)
                intervals[metric] = list(percentile_interval(reps, cfg.confidence))
            replicates.setdefault(metric, {})[label] = reps
        group.per_seed[label] = {"stage": s.id, "status": "done", "metrics": scalars, "ci95": intervals,
                                 "duration_s": (s.result or {}).get("duration_s")}
    metrics = list(dict.fromkeys(m for s in group.done for m in {**s.scalars(), **curve_values(group, s)}))
    for metric in metrics:
        values = {seed_label(s.seed): {**s.scalars(), **curve_values(group, s)}.get(metric) for s in group.done}
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
    #: One line per (plugin, key) whose result lacks a declared metric.
    warnings: list[str] = field(default_factory=list)
    #: One line per plugin whose result holds numbers it did not declare (shown in "all metrics" only).
    notes: list[str] = field(default_factory=list)
    #: Where declarations not recorded in a result come from (the plugin classes).
    plugins: PluginResolver | None = None

    def find(self, entry: str | None, model: str, sections: tuple[str, ...] = ("metrics", "attacks")) -> Group | None:
        if entry is None:
            return None
        for g in self.groups:
            if g.entry == entry and g.model == model and g.section in sections:
                return g
        return None

    def evaluation_groups(self) -> list[Group]:
        return [g for g in self.groups if g.section in ("metrics", "attacks")]


def declarations(groups: list[Group], thresholds: list[float],
                 plugins: PluginResolver | None) -> tuple[list[str], list[str]]:
    """Each group's declared metrics (from its first finished stage), and the lines about results that lack a
    declared metric (warnings) or hold undeclared numbers (notes), one per plugin and key."""
    missing: dict[tuple[str, str], list[str]] = {}
    extra: dict[str, list[str]] = {}
    unknown: list[str] = []
    for g in groups:
        done = g.done
        if not done:  # nothing finished: what the plugin class declares (e.g. whether it reports a matrix)
            g.specs = declared_specs(g.stages[0], plugins)
            continue
        g.specs = declared_specs(done[0], plugins)
        if g.specs is None:
            if g.plugin not in unknown:
                unknown.append(g.plugin)
            continue
        g.derived = [d for c in g.specs_of_kind("curve") if c.field for d in curve_specs(c, thresholds)]
        for s in done:
            for key in missing_declared(g.specs, s):
                missing.setdefault((g.plugin, key), []).append(s.id)
            for key in undeclared(g.specs, s):
                if key not in extra.setdefault(g.plugin, []):
                    extra[g.plugin].append(key)
    warnings = [f"plugin '{plugin}' declares '{key}' but its result lacks it ({len(ids)} stage"
                f"{'s' if len(ids) != 1 else ''}: {', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
                for (plugin, key), ids in missing.items()]
    notes = [f"plugin '{plugin}' reports numbers it does not declare: {', '.join(keys)} (shown under all metrics "
             "only, without example-level intervals)" for plugin, keys in extra.items() if keys]
    notes += [f"plugin '{plugin}': its results record no declarations and its class is not installed here: its "
              "numbers are shown under all metrics only" for plugin in unknown]
    return warnings, notes


def aggregate(run: RunData, plugins: PluginResolver | None = None) -> Aggregate:
    """Every group's metrics; ``plugins`` gives the declarations of results that do not record them (written
    before declarations were recorded)."""
    groups = build_groups(run)
    warnings, notes = declarations(groups, run.config.curve_thresholds, plugins)
    for g in groups:
        aggregate_group(g, run)
    return Aggregate(run, groups, warnings, notes, plugins)


# -- the report's tables -----------------------------------------------------------------------------------------

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
    elif metric not in group.across or (mean := group.across[metric].mean) is None:
        cell["status"] = "no value"
    else:
        s = group.across[metric]
        expected = len(group.stages)
        cell.update(status="done", mean=mean * scale,
                    std=None if s.std is None else s.std * scale,
                    ci95=None if s.ci is None else [s.ci[0] * scale, s.ci[1] * scale],
                    n=s.n, expected=expected, partial=s.n < expected)
    return cell


def default_columns(agg: Aggregate) -> list[dict[str, Any]]:
    """The table of a suite whose ``report:`` names no columns: every displayed scalar metric (``MetricSpec.show``)
    that a metrics or attacks entry reports, in suite and declaration order (a family's keys as reported); an entry
    that reports a matrix is shown as its matrix instead."""
    columns: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for _, entry, _ in agg.run.entries():
        if is_transfer(agg, entry):
            continue
        for g in entry_groups(agg, entry):
            if g.specs is None:
                continue
            declared = [s.name for s in g.specs + g.derived if not s.is_family]
            reported = list(dict.fromkeys([*[m for m in declared if m in g.across], *g.across]))
            for metric in reported:
                spec = g.spec(metric)
                if spec is None or spec.kind != "scalar" or not spec.show or (entry, metric) in seen:
                    continue
                seen.add((entry, metric))
                columns.append({"label": f"{entry}: {spec.display}", "entry": entry, "metric": metric,
                                "scale": spec.scale, "digits": spec.digits})
    return columns


def summary_table(agg: Aggregate, spec: ReportTable) -> dict[str, Any]:
    """One of the suite's ``report.tables``. Rows: models; cells: mean and std over seeds (scaled), or a status
    saying why there is no number."""
    run = agg.run
    columns = [c.model_dump() for c in spec.columns]
    rows = [{"model": model, "baseline": model == run.config.baseline,
             "cells": [summary_cell(agg, run.resolve_entry(col.entry), model, col.metric, col.scale)
                       for col in spec.columns]}
            for model in table_models(run)]
    return {"name": spec.name, "title": spec.heading, "columns": columns, "rows": rows, "n_seeds": len(run.seeds)}


def summary_tables(agg: Aggregate) -> list[dict[str, Any]]:
    """Every table of the suite's ``report.tables``, in its order; a suite that names none gets one table of every
    displayed metric (:func:`default_columns`), named ``metrics``."""
    if agg.run.config.tables:
        return [summary_table(agg, spec) for spec in agg.run.config.tables]
    columns = default_columns(agg)
    run = agg.run
    rows = [{"model": model, "baseline": model == run.config.baseline,
             "cells": [summary_cell(agg, col["entry"], model, col["metric"], col["scale"]) for col in columns]}
            for model in table_models(run)]
    return [{"name": "metrics", "title": "Every displayed metric per model", "columns": columns, "rows": rows,
             "n_seeds": len(run.seeds), "default": True}] if columns else []


def entry_groups(agg: Aggregate, entry: str) -> list[Group]:
    return [g for g in agg.groups if g.entry == entry and g.section in ("metrics", "attacks")]


def is_transfer(agg: Aggregate, entry: str) -> bool:
    """An entry that reports a matrix (a trigger found on one model evaluated on others): shown as its matrix, not
    as rows of the side-by-side tables, and judged by no indicator."""
    return any(g.specs_of_kind("matrix") for g in entry_groups(agg, entry))


def attack_entries(agg: Aggregate) -> list[str]:
    return [e for sec, e, _ in agg.run.entries() if sec == "attacks" and not is_transfer(agg, e)]


def attack_columns(agg: Aggregate) -> list[dict[str, Any]]:
    """The side-by-side table's columns: the shown scalar metrics that every attack of the suite declares, in the
    order the first one declares them (so every row has the same measures), then the success rates at the report's
    curve thresholds (for attacks that declare a curve)."""
    declared = [[s for s in g.specs + g.derived if s.kind == "scalar" and s.show and not s.is_family]
                for e in attack_entries(agg) for g in entry_groups(agg, e) if g.specs is not None]
    if not declared:
        return []
    common = [s for s in declared[0] if all(any(o.name == s.name for o in other) for other in declared[1:])]
    return [{"label": s.display, "metric": s.name, "scale": s.scale, "digits": s.digits} for s in common]


#: The field of a transfer record naming the model whose string or edit it replays.
SOURCE_FIELD = "source"


def replays_a_source(stages: Iterable[StageData]) -> bool:
    """Whether the finished ones of ``stages`` replay another model's strings or edits (a transfer: their records
    name their source)."""
    return any(SOURCE_FIELD in r for s in stages if s.done for r in s.records[:1])


def is_control(run: RunData, entry: str) -> bool:
    """Whether ``entry`` is a control: the suite says so (``control_of:``), or its results do (a plugin's own)."""
    return entry in run.controls or any(s.done and s.result and s.result.get("control") for s in run.stages
                                        if s.entry == entry)


def attack_table(agg: Aggregate) -> dict[str, Any]:
    """Every attack of the suite (controls included) on every model, side by side, with the
    same columns: one row per (attack, model)."""
    run = agg.run
    rows = []
    columns = attack_columns(agg)
    plugins = {e: p for _, e, p in run.entries()}
    for entry in attack_entries(agg):
        plugin = plugins[entry]
        for model in table_models(run):
            if agg.find(entry, model) is None:
                continue
            rows.append({"attack": entry, "plugin": plugin, "control": is_control(run, entry), "model": model,
                         "baseline": model == run.config.baseline,
                         "cells": [summary_cell(agg, entry, model, c["metric"], c["scale"]) for c in columns]})
    return {"columns": columns, "rows": rows, "n_seeds": len(run.seeds)}


def compared_models(run: RunData) -> list[str]:
    if run.config.baseline is None:
        return []
    return list(run.config.compare) or [m for m in run.models if m != run.config.baseline]
