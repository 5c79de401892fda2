"""``harness power``: documents x seeds per primary endpoint, checked against a hand computation on constructed runs
(one seed: (z sigma / delta)^2; three seeds with seed variance: sigma^2 / (k (delta / z)^2 - tau^2) per seed)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from harness.attacks import example_record
from harness.cli import main
from tests.test_primary_endpoints import N, make_run

Z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.80)  # 1.95996 + 0.84162
PRIMARY = {"primary": [{"model": "mono", "reference": "base", "entry": "atk", "metric": "mean_nll_increase",
                        "direction": "decrease", "min_effect": 0.1}]}


def _records(shift_by_seed: dict[int, float]):
    """base: +1 nat on every example; mono: +1 nat +-0.5 (alternating) plus a per-seed shift."""
    def records(model: str, seed: int) -> list[dict]:
        extra = [0.0] * N if model == "base" else [shift_by_seed[seed] + (0.5 if i % 2 else -0.5) for i in range(N)]
        return [example_record(f"ex-{i}", 2.0, 3.0 + extra[i], 0.15) for i in range(N)]
    return records


def test_one_seed_by_hand(tmp_path, capsys):
    run = make_run(tmp_path / "run", {"base": 0.0, "mono": 0.0}, {}, PRIMARY, seeds=[42],
                   records=_records({42: 0.0}))
    assert main(["power", str(run)]) == 0
    out = capsys.readouterr().out
    sigma = float(np.std([0.5, -0.5] * (N // 2), ddof=1))  # 0.5064
    delta = 0.1 * 1.0  # 10% of the base's mean NLL increase (1 nat)
    n = (Z * sigma / delta) ** 2  # 201.3
    assert f"documents x seeds = (z sigma / delta)^2 = {math.ceil(n)}" in out
    assert f"1 seed: {math.ceil(n)} documents" in out and f"3 seeds: {math.ceil(n / 3)} documents" in out
    assert "seed-level SD unknown with one seed" in out


def test_three_seeds_with_seed_variance_by_hand(tmp_path):
    from harness._engine.report import load_run
    from harness._engine.report.aggregate import aggregate
    from harness._engine.report.power import power_table

    run = make_run(tmp_path / "run", {"base": 0.0, "mono": 0.0}, {}, PRIMARY, seeds=[1, 2, 3],
                   records=_records({1: 0.1, 2: -0.1, 3: 0.0}))
    (row,) = power_table(aggregate(load_run(run)))
    sigma2 = float(np.var([0.5, -0.5] * (N // 2), ddof=1))
    tau2 = float(np.var([0.1, -0.1, 0.0], ddof=1)) - sigma2 / N  # 0.01 - 0.00641
    assert row["sigma"] == pytest.approx(math.sqrt(sigma2)) and row["tau"] == pytest.approx(math.sqrt(tau2))
    room = {k: k * (0.1 / Z) ** 2 - tau2 for k in (1, 2, 3, 5, 10)}
    expected = {str(k): (math.ceil(sigma2 / r) if r > 0 else None) for k, r in room.items()}
    assert row["needed"] == expected
    assert expected["1"] is None and expected["5"] is not None  # one seed cannot beat this seed variance


def test_power_on_a_run_without_primary_says_so(tmp_path, capsys):
    run = make_run(tmp_path / "run", {"base": 0.0, "mono": 0.0}, {}, {}, seeds=[42], records=_records({42: 0.0}))
    assert main(["power", str(run)]) == 0
    assert "No primary endpoint declared" in capsys.readouterr().out
