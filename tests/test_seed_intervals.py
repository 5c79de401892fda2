"""Seed-level intervals that cover: simulated coverage of the report's intervals over 3 and 5 seeds, with the seed
variance from 0 to 2x the example-level standard error (the per-seed estimate = true value + seed effect + its
finite test set's error). The percentile bootstrap over seeds the report used before is simulated beside them: it
under-covers with 3 seeds, which is why it was replaced."""

from __future__ import annotations

import numpy as np
import pytest

from harness._engine.report.stats import ExampleStatistic, paired_bootstrap, percentile_interval, seed_level_replicates

TRIALS = 1000
N_BOOT = 1000


def _old_two_stage(values: np.ndarray, se: float, rng: np.random.Generator) -> tuple[float, float]:
    """The former interval: resample the seeds, then one example-level replicate per drawn seed (normal here)."""
    k = len(values)
    per_seed = values[:, None] + rng.normal(0, se, size=(k, N_BOOT))  # each seed's example bootstrap
    seed_idx = rng.integers(0, k, size=(N_BOOT, k))
    rep_idx = rng.integers(0, N_BOOT, size=(N_BOOT, k))
    return percentile_interval(per_seed[seed_idx, rep_idx].mean(axis=1), 0.95)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("seed_sd_in_se", [0.0, 0.5, 1.0, 2.0])
def test_t_interval_over_seeds_covers(k, seed_sd_in_se):
    rng = np.random.default_rng(1000 * k + int(10 * seed_sd_in_se))
    se, truth = 0.05, 0.3
    values = truth + rng.normal(0, seed_sd_in_se * se, size=(TRIALS, k)) + rng.normal(0, se, size=(TRIALS, k))
    covered = 0
    for trial in values:
        lo, hi = percentile_interval(seed_level_replicates(trial[:, None], N_BOOT, rng)[0], 0.95)
        covered += lo <= truth <= hi
    assert covered / TRIALS >= 0.93


def test_the_former_bootstrap_over_three_seeds_does_not_cover():
    rng = np.random.default_rng(7)
    se, truth = 0.05, 0.3
    values = truth + rng.normal(0, 2 * se, size=(TRIALS, 3)) + rng.normal(0, se, size=(TRIALS, 3))
    covered = 0
    for trial in values:
        lo, hi = _old_two_stage(trial, se, rng)
        covered += lo <= truth <= hi
    assert covered / TRIALS < 0.90  # the simulation can tell a bad interval


@pytest.mark.parametrize("seed_sd_in_se", [0.0, 2.0])
def test_paired_interval_covers_when_the_seeds_share_the_examples(seed_sd_in_se):
    """Two arms on the same 30 examples at each of 3 seeds (as an attack faces the same documents on every model
    and seed): the difference of arms = true effect + seed effect + the shared examples' effects. The seeds' spread
    misses the examples' noise they share; the report adds it."""
    rng = np.random.default_rng(int(10 * seed_sd_in_se) + 3)
    n, k, trials, truth = 30, 3, 300, 0.2
    mean = ExampleStatistic(("x",), lambda c: c["x"].mean(axis=-1))
    se = 1.0 / np.sqrt(n)
    covered = 0
    for _ in range(trials):
        example_effect = rng.normal(0, 1.0, size=n)  # per-example difference, the same at every seed
        base = rng.normal(5.0, 2.0, size=n)
        seeds = []
        for _ in range(k):
            diff = truth + rng.normal(0, seed_sd_in_se * se) + example_effect + rng.normal(0, 0.2, size=n)
            seeds.append([{"x": base + diff}, {"x": base}])
        reps = paired_bootstrap(mean, seeds, 500, rng, shared_examples=True)
        lo, hi = percentile_interval(reps[0] - reps[1], 0.95)
        covered += lo <= truth <= hi
    assert covered / trials >= 0.93
