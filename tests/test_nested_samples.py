"""Nested samples: ``select_examples`` ranks documents by (seed, document id) alone, so a larger sample contains a
smaller one, and a stage rerun with another example count keeps its records and attacks only the new examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.attacks import Example, select_examples
from harness.context import StageContext
from harness._engine.runner import Runner
from harness.stage import Stage
from harness._engine.suite import load_suite
from tests.conftest import write_suite


def _ctx(tmp_path: Path, seed: int) -> StageContext:
    stage = Stage("attacks/a/m/s1", "attacks", "a", "hotflip", "m", seed, True)
    return StageContext(stage=stage, run_dir=tmp_path, stage_dir=tmp_path / "stage", seed=seed, mode="quick")


def _examples(n: int) -> list[Example]:
    return [Example(f"doc-{i}", (), (i,), (i,)) for i in range(n)]


def test_seeded_samples_nest_and_depend_on_the_seed_alone(tmp_path):
    pool = _examples(100)
    ctx = _ctx(tmp_path, 42)
    small, large = (select_examples(pool, n, "seeded", ctx) for n in (20, 40))
    assert [ex.id for ex in large[:20]] == [ex.id for ex in small]  # n = 40 contains n = 20, which comes first
    assert len({ex.id for ex in large}) == 40
    assert [ex.id for ex in small] != [ex.id for ex in pool[:20]]  # a sample, not the first documents
    # A larger pool keeps the order of the documents it shares; another seed draws another sample.
    assert [ex.id for ex in select_examples(_examples(150), 60, "seeded", ctx) if int(ex.id[4:]) < 100][:20] == \
        [ex.id for ex in small]
    assert {ex.id for ex in select_examples(pool, 20, "seeded", _ctx(tmp_path, 43))} != {ex.id for ex in small}
    assert select_examples(pool, 20, "first", ctx) == pool[:20]


SUITE = """
name: nested
seeds: [42]
models:
  tiny: {plugin: pythia_tiny}
attacks:
  hotflip:
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}
    n_examples: @N@
    sample: seeded
    context_tokens: 12
    continuation_tokens: 8
    flips: 1
    beam_width: 4
"""


def _count_searches(monkeypatch) -> list[str]:
    """The ids of the examples HotFlip searches from now on."""
    import harness_plugins.attacks.hotflip as hotflip

    counted: list[str] = []
    search = hotflip.flip_search

    def counting(scorer, example, steps, propose):
        counted.append(example.id)
        return search(scorer, example, steps, propose)

    monkeypatch.setattr(hotflip, "flip_search", counting)
    return counted


def _run(tmp_path: Path, out: str, n: int) -> dict:
    path = write_suite(tmp_path, SUITE.replace("@N@", str(n)), name=f"suite-{out}-{n}.yaml")
    [outcome] = Runner(load_suite(path, output_dir=tmp_path / out), show_progress=False).run()
    assert outcome.status == "done"
    sdir = tmp_path / out / "stages" / "attacks" / "hotflip" / "tiny" / "s42"
    records = [json.loads(line) for line in (sdir / "records.jsonl").read_text().splitlines()]
    assert not (sdir / "carried.jsonl").exists()
    return {"records": records, "metrics": outcome.result["metrics"]}


def test_a_larger_sample_attacks_only_the_new_examples(tmp_path, monkeypatch):
    counted = _count_searches(monkeypatch)
    first = _run(tmp_path, "run", 20)
    assert len(counted) == 20 and len(first["records"]) == 20
    counted.clear()
    grown = _run(tmp_path, "run", 40)
    assert len(counted) == 20  # only the 20 new examples were attacked
    assert not set(counted) & {r["id"] for r in first["records"]}
    assert grown["records"][:20] == first["records"] and len(grown["records"]) == 40
    assert grown["metrics"]["n_examples"] == 40
    # The same numbers as a fresh run at 40.
    counted.clear()
    fresh = _run(tmp_path, "fresh", 40)
    assert len(counted) == 40
    assert fresh["records"] == grown["records"]
    assert fresh["metrics"] == grown["metrics"]
    # A smaller sample attacks nothing and counts only its own examples (never the records outside it).
    counted.clear()
    shrunk = _run(tmp_path, "run", 10)
    assert counted == [] and shrunk["records"] == first["records"][:10]
    assert shrunk["metrics"]["n_examples"] == 10
    assert shrunk["metrics"]["success_rate"] == pytest.approx(
        sum(r["success"] for r in first["records"][:10]) / 10)
    # Other options still recompute everything.
    counted.clear()
    path = write_suite(tmp_path, SUITE.replace("@N@", "10").replace("beam_width: 4", "beam_width: 3"), name="b.yaml")
    Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False).run()
    assert len(counted) == 10
