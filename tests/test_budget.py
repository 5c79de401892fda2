"""Budget accounting (harness.attacks.Budget): the scorer counts the queries, gradient passes, tokens the model really
computed and their FLOPs; every attack writes them into its records and the summary averages them."""

from __future__ import annotations

import pytest
import torch

from harness import scoring
from harness.attacks import BUDGET_FIELDS, Budget, ComputeCost, Scorer
from harness._engine.runner import Runner
from harness.store import RecordLog, read_json
from harness._engine.suite import load_suite
from tests.conftest import write_suite
from tests.test_prefix_scoring import FedPositions, swaps

T, K = 41, 16


def test_compute_cost_counts_non_embedding_parameters(tiny):
    cost = ComputeCost.of(tiny.model)
    params = dict(tiny.model.named_parameters())
    # GPT-NeoX: the input embeddings and the (untied) vocabulary projection, named by transformers 4 or 5.
    embedding = sum(p.numel() for name, p in params.items() if name.split(".")[-2] in ("embed_in", "embed_out",
                                                                                         "lm_head"))
    assert embedding == 2 * 4096 * 128
    assert cost.non_embedding_params == sum(p.numel() for p in params.values()) - embedding
    assert (cost.n_layer, cost.d_model) == (tiny.model.config.num_hidden_layers, tiny.model.config.hidden_size)
    per_token = 2 * cost.non_embedding_params + 2 * cost.n_layer * 40 * cost.d_model
    assert cost.flops(10, 40) == 10 * per_token
    assert cost.flops(10, 40, backward=True) == 30 * per_token
    # The vocabulary projection counts where it runs: 2 d V per projected position (x3 run backward too).
    assert cost.head_params == 4096 * 128
    assert cost.flops(10, 40, projected=3) == 10 * per_token + 3 * 2 * 4096 * 128
    assert cost.flops(10, 40, True, 3) == 3 * (10 * per_token + 3 * 2 * 4096 * 128)


def test_exact_scores_count_every_position_fed(tiny):
    scorer = Scorer(tiny, 16384)
    ids = torch.randint(10, 4000, (12, T), generator=torch.Generator().manual_seed(0))
    with FedPositions(tiny.model) as fed:
        scorer.nll(ids, K)
    budget = scorer.budget
    assert budget.exact_queries == 12 and budget.gradient_calls == 0 and budget.gradient_tokens == 0
    assert budget.tokens == fed.positions == 12 * (T - 1)  # the last token is only a target, never fed
    # Only the K positions that predict a continuation token are projected to the vocabulary.
    assert budget.flops == pytest.approx(scorer.cost.flops(12 * (T - 1), T - 1, projected=12 * K))
    ragged = [ids[i, :20 + i].tolist() for i in range(4)]  # right-padded to the longest in one pass: pads count
    scorer.budget.reset()
    with FedPositions(tiny.model) as fed:
        scorer.nll(ragged, 4)
    assert scorer.budget.tokens == fed.positions == 4 * (20 + 3 - 1)


def test_prefix_reuse_counts_only_the_positions_recomputed(tiny, monkeypatch):
    monkeypatch.setitem(scoring.FORWARD_OVERHEAD_TOKENS, "cpu", 0)  # the prefix path
    base, cands = swaps(4096)
    scorer = Scorer(tiny, 16384)
    with FedPositions(tiny.model) as fed:
        scorer.swap_nll(base, cands, K)
    first = scorer.budget.tokens
    assert scorer.queries == len(cands)
    assert first == fed.positions and max(fed.starts) > 0
    plain = Scorer(tiny, 16384)
    plain.nll(cands, K)
    assert first < plain.budget.tokens  # fewer positions computed, fewer FLOPs
    assert scorer.budget.flops < plain.budget.flops
    # The same base again: its prefix is in the memo, so this call runs no prefix pass at all.
    scorer.budget.reset()
    with FedPositions(tiny.model) as fed:
        scorer.swap_nll(base, cands, K)
    assert scorer.budget.tokens == fed.positions < first


def test_gradient_passes_count_forward_and_backward(tiny):
    scorer = Scorer(tiny, 16384)
    ids = torch.randint(10, 4000, (3, T), generator=torch.Generator().manual_seed(1))
    scorer.token_gradients(ids, K, [1, 2, 3])
    b = scorer.budget
    assert (b.exact_queries, b.gradient_calls, b.tokens, b.gradient_tokens) == (0, 3, 3 * T, 3 * T)
    assert b.flops == pytest.approx(scorer.cost.flops(3 * T, T, backward=True, projected=3 * (K + 1)))
    record = b.as_record()
    assert set(record) == set(BUDGET_FIELDS) and record["queries"] == 3  # gradient passes are queries too
    b.reset()
    assert b == Budget()


def test_budget_shared_by_a_batched_evaluation_and_restored_from_state():
    b = Budget(exact_queries=8, gradient_calls=0, tokens=320, gradient_tokens=0, flops=1000.0)
    assert b.as_record(share=4) == {"queries": 2, "gradient_calls": 0, "tokens": 80, "gradient_tokens": 0,
                                    "flops": 250.0}
    assert b.as_record(share=3)["queries"] == pytest.approx(8 / 3)
    assert Budget(**b.state()) == b


SUITE = """
name: budget_test
seeds: [42]
device: cpu
models:
  tiny: {plugin: pythia_tiny}
attacks:
  hotflip: &hotflip
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}
    n_examples: 4
    context_tokens: 24
    continuation_tokens: 16
    flips: 2
    beam_width: 8
  random_hotflip: {control_of: hotflip}
  uat: &uat
    opt_data: {dataset: json, data_files: @DATA@/valid.jsonl, split: valid}
    eval_data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}
    n_opt: 8
    n_eval: 8
    context_tokens: 24
    continuation_tokens: 16
    trigger_length: 4
    restarts: 1
    iterations: 2
    batch_size: 4
    top_k: 2
    beam_size: 1
  random_uat: {control_of: uat}
  uat_transfer: {needs: [uat]}
"""


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    suite = load_suite(write_suite(tmp, SUITE), output_dir=tmp / "run")
    outcomes = Runner(suite, show_progress=False).run()
    assert [o.status for o in outcomes] == ["done"] * 5
    stages = tmp / "run" / "stages" / "attacks"
    return {name: (read_json(stages / name / "tiny" / "s42" / "result.json")["metrics"],
                   RecordLog(stages / name / "tiny" / "s42" / "records.jsonl").records)
            for name in ("hotflip", "random_hotflip", "uat", "random_uat", "uat_transfer")}


def test_every_attack_records_its_budget_and_the_summary_averages_it(budget_run):
    for name, (metrics, records) in budget_run.items():
        for r in records:
            assert all(field in r for field in BUDGET_FIELDS), name
            assert r["tokens"] > 0 and r["flops"] > 0, name
        for field in BUDGET_FIELDS[1:]:
            assert metrics[f"mean_{field}"] == pytest.approx(sum(r[field] for r in records) / len(records)), name
    hotflip, control = budget_run["hotflip"][1], budget_run["random_hotflip"][1]
    for r in hotflip:  # queries: the unedited score, beam_width per step, and one gradient per step
        assert r["gradient_calls"] == r["steps"] and r["queries"] == 1 + 8 * r["steps"] + r["steps"]
        assert 0 < r["gradient_tokens"] < r["tokens"]
    assert all(r["gradient_calls"] == 0 and r["gradient_tokens"] == 0 for r in control)
    # The control spends no backward passes, so fewer FLOPs per token computed than HotFlip (per query the two also
    # differ by where their swaps land: a swap late in the context reuses more of the cached prefix).
    ratio = lambda recs: sum(r["flops"] for r in recs) / sum(r["tokens"] for r in recs)  # noqa: E731
    assert ratio(control) < ratio(hotflip)
    uat_metrics, uat_records = budget_run["uat"]
    assert all(r["queries"] == 2 and r["gradient_calls"] == 0 for r in uat_records)
    assert uat_metrics["optimisation_flops"] > 0 and uat_metrics["optimisation_queries"] > 0
    assert budget_run["random_uat"][0]["gradient_calls"] == 0 < uat_metrics["gradient_calls"]


def test_flip_attacks_record_positions_and_their_histogram(budget_run):
    for name in ("hotflip", "random_hotflip"):
        metrics, records = budget_run[name]
        hist = metrics["position_histogram"]
        assert hist["positions"] == list(range(24))
        assert sum(hist["counts"]) == sum(len(r["positions"]) for r in records) > 0
        assert all(0 <= p < 24 for r in records for p in r["positions"])
