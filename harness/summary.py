"""Summaries computed from declarations (``harness.summary``): the one owner of how a declared metric follows from
the per-example records.

A :class:`~harness.MetricSpec` with a ``field`` and an aggregation (``mean``, ``median``, ``token_weighted``,
``token_weighted_exp``, or the share over a ``threshold``) *is* a statistic of the records. The runner computes every
such metric of a stage from its records (:func:`summary_from_records`) and writes it into the stage's result, and the
report's example-level intervals resample the very same statistic (:func:`statistic`): a plugin returns only what
does not follow from its records (``aggregation: none``: a configured threshold, a curve, an optimisation's cost).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .api import LoadedModel, MetricSpec, Plugin

if TYPE_CHECKING:
    from .context import StageContext

__all__ = ["ExampleStatistic", "example_columns", "example_rows", "numeric", "complete_summary", "run_stage_summary",
           "statistic",
           "summary_from_records"]


@dataclass(frozen=True)
class ExampleStatistic:
    """How a metric follows from per-example records: the record fields it reads, and the statistic computed on
    a (replicates x examples) array of each field."""

    fields: tuple[str, ...]
    compute: Callable[[dict[str, np.ndarray]], np.ndarray]


def _mean(field: str) -> ExampleStatistic:
    return ExampleStatistic((field,), lambda c: c[field].mean(axis=-1))


def _token_weighted(field: str, weight: str, transform: Callable[[np.ndarray], np.ndarray]) -> ExampleStatistic:
    return ExampleStatistic((field, weight), lambda c: transform(c[field].sum(axis=-1) / c[weight].sum(axis=-1)))


def statistic(spec: MetricSpec) -> ExampleStatistic | None:
    """The statistic a declared metric is of its records, or None (no field, or ``aggregation: none``)."""
    field = spec.field
    if field is None or spec.kind != "scalar":
        return None
    if spec.threshold is not None and spec.aggregation == "mean":
        t = spec.threshold
        return ExampleStatistic((field,), lambda c: (c[field] > t).mean(axis=-1))
    if spec.aggregation == "mean":
        return _mean(field)
    if spec.aggregation == "median":
        return ExampleStatistic((field,), lambda c: np.median(c[field], axis=-1))
    if spec.aggregation in ("token_weighted", "token_weighted_exp") and spec.weight:
        transform = np.exp if spec.aggregation == "token_weighted_exp" else (lambda x: x)
        return _token_weighted(field, spec.weight, transform)
    return None


def numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def example_rows(spec: MetricSpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that are examples of ``spec``: those matching its ``where`` and holding a number in every field
    its statistic reads (rows of another kind, or without the field, are not examples of this metric)."""
    stat = statistic(spec)
    if stat is None:
        return []
    return [r for r in records
            if all(r.get(k) == v for k, v in spec.where.items())
            and all(numeric(r.get(f)) is not None for f in stat.fields)]


def example_columns(spec: MetricSpec | None,
                    records: list[dict[str, Any]]) -> tuple[ExampleStatistic, dict[str, np.ndarray]] | None:
    """The statistic behind a declared metric and its per-example columns, or None when the records cannot give it."""
    if spec is None or (stat := statistic(spec)) is None:
        return None
    rows = example_rows(spec, records)
    if not rows:
        return None
    return stat, {f: np.asarray([numeric(r[f]) for r in rows], dtype=float) for f in stat.fields}


def summary_from_records(specs: Sequence[MetricSpec], records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Every metric of ``specs`` that follows from ``records`` (a scalar with a ``field`` and an aggregation; families
    aside, whose keys only the plugin knows), computed on the records that are its examples; a metric none of the
    records has a number for is left out."""
    out: dict[str, float] = {}
    rows = list(records)
    for spec in specs:
        if spec.is_family or spec.name in out:
            continue
        found = example_columns(spec, rows)
        if found is None:
            continue
        stat, columns = found
        out[spec.name] = float(stat.compute({f: c[None, :] for f, c in columns.items()})[0])
    return out


def complete_summary(specs: Sequence[MetricSpec], records: Sequence[dict[str, Any]],
                     returned: dict[str, Any]) -> dict[str, Any]:
    """A stage's metrics: what follows from its records computed here (the source of truth, over any value the plugin
    returned under the same key), then the plugin's own values; in the order of the declarations."""
    computed = summary_from_records(specs, records)
    merged = {**returned, **computed}
    order = [spec.name for spec in specs if spec.name in merged]
    return {**{name: merged[name] for name in order}, **merged}


def run_stage_summary(plugin: Plugin[Any], model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
    """One stage of ``plugin`` on ``model`` and its complete metrics, as the runner computes them: the plugin's own
    values completed from its records by :func:`complete_summary` (what a test or a notebook calls)."""
    declared = plugin.declared_metrics()
    returned = plugin.run_stage(model, ctx)
    return complete_summary(declared, ctx.records.records, returned)
