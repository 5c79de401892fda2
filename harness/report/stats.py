"""Statistics of a run: mean and std over seeds, and bootstrap intervals over examples and over seeds.

Every bootstrap draws from a generator seeded by (report seed, model, entry, metric), so a report regenerated from
the same run directory has the same intervals to the last digit, whatever order it computes them in.

An interval over examples needs the stage's per-example records to reproduce its reported value (a statistic of
the records below, recomputed on all of them, must equal the metric); otherwise the records measure something
else and no example-level interval is claimed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..api import MetricSpec

#: Replicates computed per block, so a bootstrap over 10,000 examples stays within a few tens of MB.
_BLOCK_ELEMENTS = 2_000_000


def rng_for(seed: int, *parts: Any) -> np.random.Generator:
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean, and the sample standard deviation (n - 1 in the denominator; None for fewer than 2 values)."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(replicates, [alpha, 1 - alpha])
    return float(lo), float(hi)


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


def _numeric(value: Any) -> float | None:
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
            and all(_numeric(r.get(f)) is not None for f in stat.fields)]


def example_columns(spec: MetricSpec | None,
                    records: list[dict[str, Any]]) -> tuple[ExampleStatistic, dict[str, np.ndarray]] | None:
    """The statistic behind a declared metric and its per-example columns, or None when the records cannot give it."""
    if spec is None or (stat := statistic(spec)) is None:
        return None
    rows = example_rows(spec, records)
    if not rows:
        return None
    return stat, {f: np.asarray([_numeric(r[f]) for r in rows], dtype=float) for f in stat.fields}


def reproduces(stat: ExampleStatistic, columns: dict[str, np.ndarray], value: float) -> bool:
    full = float(stat.compute({f: c[None, :] for f, c in columns.items()})[0])
    return math.isclose(full, value, rel_tol=1e-6, abs_tol=1e-9)


def bootstrap_examples(stat: ExampleStatistic, columns: dict[str, np.ndarray], n_boot: int,
                       rng: np.random.Generator) -> np.ndarray:
    """``n_boot`` replicates of the statistic, each on examples resampled with replacement."""
    n = len(next(iter(columns.values())))
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    out = np.empty(n_boot)
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        out[start:start + size] = stat.compute({f: c[idx] for f, c in columns.items()})
    return out


def across_seeds_bootstrap(values: Sequence[float], replicates: Sequence[np.ndarray | None], n_boot: int,
                           rng: np.random.Generator) -> tuple[np.ndarray | None, str | None]:
    """Bootstrap replicates of the mean over seeds, and how they were made (None when no bootstrap applies).

    With example-level replicates for every seed: a two-stage bootstrap (resample seeds, then, for each drawn seed,
    one of its example-level replicates), so both the seed-to-seed and the within-seed (finite test set) variation
    widen the interval. With values only: a bootstrap over seeds (needs at least 2). With one seed and its
    replicates: the example bootstrap of that seed.
    """
    k = len(values)
    if k == 0:
        return None, None
    present = [r for r in replicates if r is not None]
    if len(present) == len(replicates):
        reps = np.stack(present)  # (seeds, n_boot_per_seed)
        if k == 1:
            return reps[0], "bootstrap over examples"
        seed_idx = rng.integers(0, k, size=(n_boot, k))
        rep_idx = rng.integers(0, reps.shape[1], size=(n_boot, k))
        return reps[seed_idx, rep_idx].mean(axis=1), "bootstrap over seeds and examples"
    if k >= 2:
        arr = np.asarray(values, dtype=float)
        return arr[rng.integers(0, k, size=(n_boot, k))].mean(axis=1), "bootstrap over seeds"
    return None, None


def aligned_columns(stat: ExampleStatistic,
                    arms: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, np.ndarray]] | None:
    """Per arm, the statistic's columns over the examples every arm has (paired by record ``id``, in the first arm's
    order); None when a record has no id or no example is shared. ``arms`` holds each arm's example records."""
    by_id = []
    for rows in arms:
        ids = {}
        for r in rows:
            if not isinstance(r.get("id"), (str, int)):
                return None
            ids[r["id"]] = r
        by_id.append(ids)
    shared = [i for i in by_id[0] if all(i in other for other in by_id[1:])]
    if not shared:
        return None
    return [{f: np.asarray([_numeric(ids[i][f]) for i in shared], dtype=float) for f in stat.fields} for ids in by_id]


def paired_bootstrap(stat: ExampleStatistic, seeds: Sequence[Sequence[dict[str, np.ndarray]]], n_boot: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Replicates ``(arms, n_boot)`` of the mean over seeds of ``stat`` for every arm, resampled together.

    ``seeds[s][a]`` holds arm ``a``'s columns at seed ``s``, rows aligned across arms (the same examples). Each
    replicate draws the seeds with replacement (when there are two or more) and, for each drawn seed, one resample of
    its examples that every arm shares: the arms (a model and its baseline, an attack and its control) face the
    same seeds and examples, so their difference is measured without the noise they share.
    """
    k = len(seeds)
    n_arms = len(seeds[0])
    per_seed = np.empty((k, n_arms, n_boot))
    for s, arms in enumerate(seeds):
        n = len(next(iter(arms[0].values())))
        block = max(1, _BLOCK_ELEMENTS // max(n, 1))
        for start in range(0, n_boot, block):
            size = min(block, n_boot - start)
            idx = rng.integers(0, n, size=(size, n))
            for a, columns in enumerate(arms):
                per_seed[s, a, start:start + size] = stat.compute({f: c[idx] for f, c in columns.items()})
    if k == 1:
        return per_seed[0]
    seed_idx = rng.integers(0, k, size=(n_boot, k))
    rep_idx = rng.integers(0, n_boot, size=(n_boot, k))
    return per_seed[seed_idx, :, rep_idx].mean(axis=1).T


def paired_seed_bootstrap(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates ``(arms, n_boot)`` of the mean over seeds, seeds resampled together; ``values`` is (seeds, arms)."""
    k = values.shape[0]
    return values[rng.integers(0, k, size=(n_boot, k))].mean(axis=1).T
