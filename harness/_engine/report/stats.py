"""Statistics of a run: mean and std over seeds, bootstrap intervals over examples within a seed, and intervals over
seeds that keep their coverage with few seeds.

With two or more seeds an interval is a t-interval on the per-seed values (each seed's estimate already carries its
finite-sample noise, so their spread measures both the seed-to-seed and the within-seed variation): the replicates
are draws of a multivariate t with k - 1 degrees of freedom centred on the mean over seeds with the per-seed values'
covariance / k (:func:`seed_level_replicates`), so any paired contrast of arms read off them gets the t-interval,
and a ratio its delta-method counterpart. A percentile bootstrap over 3 seeds covers 0.83-0.92 instead of 0.95 when
the seeds differ (tests/test_seed_intervals.py simulates both).

Every bootstrap draws from a generator seeded by (report seed, model, entry, metric), so a report regenerated from
the same run directory has the same intervals to the last digit, whatever order it computes them in.

An interval over examples needs the stage's per-example records to reproduce its reported value (a statistic of
the records below, recomputed on all of them, must equal the metric); otherwise the records measure something
else and no example-level interval is claimed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...summary import ExampleStatistic, example_columns, example_rows, numeric, statistic

__all__ = ["ExampleStatistic", "example_columns", "example_rows", "statistic"]  # their owner: harness.summary

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


#: How intervals over two or more seeds are made (shown with every such interval).
SEED_METHOD = "t over seeds"


def seed_level_replicates(per_seed: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates ``(arms, n_boot)`` of the mean over seeds from per-seed values ``(seeds, arms)`` (two or more
    seeds): draws of the multivariate t with k - 1 degrees of freedom, centre the mean over seeds, scale the per-seed
    covariance / k. For every linear contrast of the arms (a difference, say) their percentile interval is the
    t-interval mean +- t_{k-1} * sd / sqrt(k) of the contrast's per-seed values, which keeps its coverage with 3
    seeds whatever the seed variance (a bootstrap over 3 seeds cannot)."""
    values = np.asarray(per_seed, dtype=float)
    k = values.shape[0]
    centre = values.mean(axis=0)
    deviations = values - centre  # (k, arms); deviations.T @ deviations = (k - 1) * covariance
    normal = rng.standard_normal((n_boot, k)) @ deviations / math.sqrt(k * (k - 1))  # ~ N(0, covariance / k)
    widen = np.sqrt((k - 1) / rng.chisquare(k - 1, size=n_boot))  # normal / sqrt(chi2 / df): Student's t
    return (centre[None, :] + normal * widen[:, None]).T


def across_seeds_bootstrap(values: Sequence[float], replicates: Sequence[np.ndarray | None], n_boot: int,
                           rng: np.random.Generator) -> tuple[np.ndarray | None, str | None]:
    """Replicates of the mean over seeds, and how they were made (None when no interval applies).

    Two or more seeds: the t-interval's replicates over the per-seed values (:func:`seed_level_replicates`). One
    seed with example-level replicates: the example bootstrap of that seed.
    """
    k = len(values)
    if k == 0:
        return None, None
    if k >= 2:
        arr = np.asarray(values, dtype=float)[:, None]
        return seed_level_replicates(arr, n_boot, rng)[0], SEED_METHOD
    if replicates and replicates[0] is not None:
        return replicates[0], "bootstrap over examples"
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
    return [{f: np.asarray([numeric(ids[i][f]) for i in shared], dtype=float) for f in stat.fields} for ids in by_id]


def paired_bootstrap(stat: ExampleStatistic, seeds: Sequence[Sequence[dict[str, np.ndarray]]], n_boot: int,
                     rng: np.random.Generator, shared_examples: bool = False) -> np.ndarray:
    """Replicates ``(arms, n_boot)`` of the mean over seeds of ``stat`` for every arm, paired.

    ``seeds[s][a]`` holds arm ``a``'s columns at seed ``s``, rows aligned across arms (the same examples). One seed:
    each replicate is one resample of the examples that every arm shares (the arms, a model and its baseline or an
    attack and its control, face the same examples, so their difference is measured without the noise they share).
    Two or more: the t replicates over the arms' per-seed values (:func:`seed_level_replicates`), paired the same way.
    When every seed scored the same examples (``shared_examples``: the same ids in the same order), the seeds share
    the test set's sampling noise, which their spread cannot show: one resample of the examples, the same at every
    seed, adds it (the deviation of the mean over seeds on resampled examples from the mean on all of them).
    """
    k = len(seeds)
    if k >= 2:
        per_seed = np.array([[float(stat.compute({f: c[None, :] for f, c in columns.items()})[0])
                              for columns in arms] for arms in seeds])
        reps = seed_level_replicates(per_seed, n_boot, rng)
        if shared_examples:
            reps = reps + _shared_example_noise(stat, seeds, per_seed.mean(axis=0), n_boot, rng)
        return reps
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
    return per_seed[0]


def _shared_example_noise(stat: ExampleStatistic, seeds: Sequence[Sequence[dict[str, np.ndarray]]],
                          centre: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(arms, n_boot)`` deviations of the mean over seeds when the examples every seed shares are resampled
    together (one index draw for all seeds and arms) from its value on all of them."""
    n = len(next(iter(seeds[0][0].values())))
    out = np.zeros((len(seeds[0]), n_boot))
    block = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(size, n))
        for arms in seeds:
            for a, columns in enumerate(arms):
                out[a, start:start + size] += stat.compute({f: c[idx] for f, c in columns.items()}) / len(seeds)
    return out - centre[:, None]


def paired_seed_bootstrap(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Replicates ``(arms, n_boot)`` of the mean over seeds from per-seed values ``(seeds, arms)`` (two or more),
    paired: :func:`seed_level_replicates`."""
    return seed_level_replicates(values, n_boot, rng)
