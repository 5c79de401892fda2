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


def _token_weighted(transform: Callable[[np.ndarray], np.ndarray]) -> ExampleStatistic:
    return ExampleStatistic(("nll_sum", "tokens"),
                            lambda c: transform(c["nll_sum"].sum(axis=-1) / c["tokens"].sum(axis=-1)))


#: Metrics of the perplexity and attack plugins, by name (see plugins/metrics/perplexity.py, plugins/attacks/).
EXAMPLE_STATISTICS: dict[str, ExampleStatistic] = {
    "perplexity": _token_weighted(np.exp),
    "mean_nll": _token_weighted(lambda x: x),
    "success_rate": _mean("success"),
    "mean_relative_increase": _mean("relative_increase"),
    "median_relative_increase": ExampleStatistic(("relative_increase",),
                                                 lambda c: np.median(c["relative_increase"], axis=-1)),
    "mean_nll_before": _mean("nll_before"),
    "mean_nll_after": _mean("nll_after"),
    # HotFlip: mean over the examples that have one (records with `spearman: null` are skipped, as the plugin does).
    "spearman_mean": _mean("spearman"),
}


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def example_columns(metric: str, records: list[dict[str, Any]]) -> tuple[ExampleStatistic, dict[str, np.ndarray]] | None:
    """The statistic behind ``metric`` and its per-example columns, or None when the records cannot give it.

    Besides the named metrics, ``task/metric`` (the lm_eval plugin's naming, optionally ``task/metric,filter``) is
    the mean of the per-sample ``metric`` over that task's records.
    """
    if metric in EXAMPLE_STATISTICS:
        stat, rows = EXAMPLE_STATISTICS[metric], records
    elif "/" in metric and not metric.endswith("_stderr"):
        task, name = metric.split("/", 1)
        name, _, filt = name.partition(",")
        rows = [r for r in records if r.get("task") == task and (not filt or r.get("filter") == filt)]
        stat = _mean(name)
    else:
        return None
    columns: dict[str, list[float]] = {f: [] for f in stat.fields}
    for r in rows:
        values = [_numeric(r.get(f)) for f in stat.fields]
        if any(v is None for v in values):
            continue  # rows of another kind (or without this field) are not examples of this metric
        for f, v in zip(stat.fields, values):
            columns[f].append(v)  # type: ignore[arg-type]
    if not columns[stat.fields[0]]:
        return None
    return stat, {f: np.asarray(v, dtype=float) for f, v in columns.items()}


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
    if all(r is not None for r in replicates):
        reps = np.stack(replicates)  # type: ignore[arg-type]  # (seeds, n_boot_per_seed)
        if k == 1:
            return reps[0], "bootstrap over examples"
        seed_idx = rng.integers(0, k, size=(n_boot, k))
        rep_idx = rng.integers(0, reps.shape[1], size=(n_boot, k))
        return reps[seed_idx, rep_idx].mean(axis=1), "bootstrap over seeds and examples"
    if k >= 2:
        arr = np.asarray(values, dtype=float)
        return arr[rng.integers(0, k, size=(n_boot, k))].mean(axis=1), "bootstrap over seeds"
    return None, None
