"""The core's per-example loop (``harness.loop``) and the summaries it leaves to the declarations
(``harness.summary``): skipping what is recorded, stopping only where records are durable, the budget per example,
chunks computed whole, and every declared record metric computed once, by the core."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from harness import MetricSpec, StagePreempted
from harness.attacks import ATTACK_METRICS, Budget, attack_summary, example_record
from harness.context import StageContext
from harness._engine.graph import Stage
from harness.loop import run_chunks, run_examples
from harness.store import RecordLog
from harness.summary import complete_summary, summary_from_records


@dataclass(frozen=True)
class Item:
    id: str
    value: float


class CountingScorer:
    """Spends one query per call, like a Scorer's budget."""

    def __init__(self) -> None:
        self.budget = Budget()

    def score(self, n: int = 1) -> None:
        self.budget.exact_queries += n
        self.budget.tokens += 10 * n


def _ctx(tmp_path, name="loop"):
    stage = Stage(f"attacks/{name}/tiny/s1", "attacks", name, name, "tiny", 1, True)
    return StageContext(stage, tmp_path, tmp_path / name, 1, "quick", show_progress=False)


ITEMS = [Item(f"doc-{i}", float(i)) for i in range(7)]


def test_each_example_once_with_its_own_budget_and_resume_after_a_stop(tmp_path):
    ctx, scorer, calls = _ctx(tmp_path), CountingScorer(), []

    def one(item: Item) -> dict:
        calls.append(item.id)
        scorer.score(int(item.value) + 1)  # example i spends i + 1 queries
        if item.id == "doc-2":
            ctx.stop_flag[0] = True  # a stop request arrives while example 2 runs: it still finishes
        return {"id": item.id, "value": item.value}

    with pytest.raises(StagePreempted):
        run_examples(ctx, ITEMS, one, scorer=scorer)
    assert calls == ["doc-0", "doc-1", "doc-2"]  # stopped before example 3, after example 2's record was written
    durable = RecordLog(ctx.stage_dir / "records.jsonl").records
    assert [r["id"] for r in durable] == calls and [r["queries"] for r in durable] == [1, 2, 3]

    resumed, calls = _ctx(tmp_path), []
    scorer = CountingScorer()
    records = run_examples(resumed, ITEMS, one, scorer=scorer)
    assert calls == [f"doc-{i}" for i in range(3, 7)]  # nothing recorded is recomputed
    assert [r["id"] for r in records] == [i.id for i in ITEMS]
    assert [r["queries"] for r in records] == [i + 1 for i in range(7)]  # reset per example, not cumulative
    assert [r["tokens"] for r in records] == [10 * (i + 1) for i in range(7)]


def test_a_partly_recorded_chunk_is_computed_whole_and_only_its_missing_records_appended(tmp_path):
    ctx, scorer, chunks = _ctx(tmp_path), CountingScorer(), []
    log = ctx.records
    log.append({"id": "doc-3", "value": -1.0})  # recorded before an interruption, inside the second chunk

    def chunk_fn(chunk: list[Item]) -> list[dict]:
        chunks.append([i.id for i in chunk])
        scorer.score(len(chunk) * 2)
        return [{"id": i.id, "value": i.value} for i in chunk]

    records = run_chunks(ctx, ITEMS, 3, chunk_fn, scorer=scorer)
    assert chunks == [["doc-0", "doc-1", "doc-2"], ["doc-3", "doc-4", "doc-5"], ["doc-6"]]  # fixed by position
    by_id = {r["id"]: r for r in records}
    assert by_id["doc-3"]["value"] == -1.0 and "queries" not in by_id["doc-3"]  # the old record is kept as it was
    assert by_id["doc-4"]["queries"] == 2 and by_id["doc-6"]["queries"] == 2  # each chunk's spending shared equally
    assert len(log) == 7

    with pytest.raises(ValueError, match="2 records for a chunk of 3"):
        run_chunks(_ctx(tmp_path, "bad"), ITEMS, 3, lambda chunk: [{"id": "x"}, {"id": "y"}])


def test_declared_record_metrics_are_computed_by_the_core_and_win_over_a_plugins_value():
    rel = [0.0, 0.1, 0.2, 0.5, 0.05]
    recs = [example_record(f"d{i}", 2.0, 2.0 * (1 + r), 0.15, queries=3 + i, spearman=None if i == 0 else 0.1 * i)
            for i, r in enumerate(rel)]
    specs = [*ATTACK_METRICS, MetricSpec("spearman_mean", field="spearman"), MetricSpec("family/{x}", field="x")]
    computed = summary_from_records(specs, recs)
    assert computed["success_rate"] == pytest.approx(np.mean([r > 0.15 for r in rel]))
    assert computed["mean_relative_increase"] == pytest.approx(np.mean(rel))
    assert computed["median_relative_increase"] == pytest.approx(np.median(rel))
    assert computed["mean_queries"] == pytest.approx(5.0)
    assert computed["spearman_mean"] == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.4]))  # null: not an example of it
    assert "mean_flops" not in computed and "family/{x}" not in computed  # no record has it; families: the plugin's
    assert "success_curve" not in computed and "threshold" not in computed  # aggregation none: the plugin's
    merged = complete_summary(specs, recs, {"success_rate": 0.99, "extra": 1, **attack_summary(recs, 0.15)})
    assert merged["success_rate"] == computed["success_rate"]  # one source of truth: the records
    assert merged["extra"] == 1 and merged["n_examples"] == 5
    assert list(merged)[:2] == ["success_rate", "threshold"]  # in the order of the declarations


def test_hotflips_random_control_draws_each_steps_swaps_from_its_own_stream():
    from harness_plugins.attacks.hotflip import random_proposer

    allowed = torch.zeros(100, dtype=torch.bool)
    allowed[10:90] = True
    streams: list[int] = []

    def stream(step: int) -> torch.Generator:
        streams.append(step)
        return torch.Generator().manual_seed(1000 + step)

    propose = random_proposer(allowed, 4, stream)
    ids = list(range(20, 36))
    editable = list(range(2, 14))
    first, _ = propose(ids, editable, set(), 3)
    # Whatever happened before (other steps drawn, another path), step 3 of this example offers the same swaps.
    propose(ids, editable, set(), 0)
    propose(ids, editable, {(2, 11)}, 1)
    again, _ = propose(ids, editable, set(), 3)
    assert first == again and len(first) == 4 and streams == [3, 0, 1, 3]
    assert all(p in editable and allowed[t] and t != ids[p] for p, t in first)
