"""Cheaper candidate scoring (issue 24): the probe-sampling screen (the kept candidate always exactly scored, off by
default), the draft it screens with, ``batch_tokens: auto`` (finds a batch that runs, once per model)."""

from __future__ import annotations

import math

import pytest
import torch

from harness import HarnessError, native_bf16, scoring
from harness.attacks import Scorer, TaskConfig
from harness.screening import ScreenConfig, probe_sample, spearman
from tests.test_prefix_scoring import K, swaps

#: The screens below in bf16 where this machine computes it natively (the default), else in fp32 (bf16 is refused)
DRAFT_DTYPE = "bfloat16" if native_bf16("cpu") else "float32"


def test_draft_with_every_block_in_float32_is_the_model(tiny):
    model = tiny.model
    n = model.config.num_hidden_layers
    ids = torch.randint(2, 4000, (3, 20), generator=torch.Generator().manual_seed(0))
    full = scoring.draft_model(model, range(n))
    with torch.no_grad():
        assert torch.equal(full(input_ids=ids).logits, model(input_ids=ids).logits)
        short = scoring.draft_model(model, [0, n - 1], torch.bfloat16)
        assert short.config.num_hidden_layers == 2 and model.config.num_hidden_layers == n  # the model untouched
        assert short(input_ids=ids).logits.dtype == torch.bfloat16
        assert not torch.equal(short(input_ids=ids).logits.float(), model(input_ids=ids).logits)
    assert next(model.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="not blocks"):
        scoring.draft_model(model, [n])


def test_screen_layer_choice():
    assert ScreenConfig(draft_layers=5).layer_indices(30) == [0, 1, 2, 28, 29]
    assert ScreenConfig(draft_layers=[0, -1]).layer_indices(30) == [0, 29]
    assert ScreenConfig().layer_indices(30) is None
    assert spearman(torch.tensor([1.0, 2, 3]), torch.tensor([3.0, 2, 1])) == -1.0


def test_probe_sampling_scores_the_kept_candidate_exactly():
    exact = torch.randperm(32, generator=torch.Generator().manual_seed(0)).double()
    calls = []

    def score(rows: torch.Tensor, draft: bool) -> torch.Tensor:
        calls.append((draft, rows.tolist()))
        return -exact[rows] if draft else exact[rows]  # a draft that ranks backwards: agreement -1

    stats: dict[str, float] = {}
    cfg = ScreenConfig(probe_factor=8, r=8, audit=True)
    out = probe_sample(score, len(exact), 1, "min", cfg, stats)
    scored = torch.isfinite(out)
    assert torch.equal(out[scored], exact[scored]) and bool((out[~scored] == math.inf).all())
    assert calls[0] == (True, list(range(32)))  # the draft sees every candidate
    # 4 probes spread over the draft's ranking, agreement -1: (1 - -1) x 32 / 8 = 8 more of the draft's best.
    assert int(scored.sum()) == 4 + 8 and stats["agreement"] == pytest.approx(-1.0)
    # the probe spans the draft's whole ranking: its worst, the exact best here, is scored and kept
    assert stats["misses"] == 0 and stats["regret"] == 0 and float(out.min()) == 0.0
    # grouped (mean over consecutive rows) and maximised: the same rule on candidates of 2 rows each
    out = probe_sample(lambda rows, draft: exact[rows], 16, 2, "max", ScreenConfig(probe_factor=4, r=16))
    best = exact.view(16, 2).mean(1).argmax()
    assert out.view(16, 2).mean(1).argmax() == best and bool((out[torch.isinf(out)] < 0).all())


def test_rescore_without_probe_scores_only_the_drafts_best_in_one_call():
    exact = torch.randperm(32, generator=torch.Generator().manual_seed(1)).double()
    draft = exact + torch.linspace(0, 0.5, 32)[torch.randperm(32, generator=torch.Generator().manual_seed(2))]
    calls = []

    def score(rows: torch.Tensor, is_draft: bool) -> torch.Tensor:
        calls.append((is_draft, rows.tolist()))
        return draft[rows] if is_draft else exact[rows]

    stats: dict[str, float] = {}
    cfg = ScreenConfig(probe_factor=None, min_exact=3, audit=True)
    out = probe_sample(score, 32, 1, "min", cfg, stats)
    best3 = torch.argsort(draft, stable=True)[:3].tolist()
    # the draft over all, then one exact call on its three best (no probe pass), audit aside
    assert calls[0] == (True, list(range(32))) and calls[1] == (False, best3) and len(calls) == 3
    assert torch.isfinite(out).nonzero()[:, 0].tolist() == sorted(best3)
    assert "agreement" not in stats and stats["exact"] == 3 and stats["misses"] == 0
    assert cfg.cost_in_candidates(32, 4) == 32 + 3 + 32  # the draft at every block, 3 exact, the audit


def test_scorer_screen_keeps_the_draft_best_exact_and_counts_the_draft(tiny):
    base, cands = swaps(4096)
    exact = Scorer(tiny, 16384).swap_nll(base, cands, K)
    scorer = Scorer(tiny, 16384, ScreenConfig(draft_layers=1, probe_factor=8, r=8, audit=True, dtype=DRAFT_DTYPE))
    out = scorer.swap_nll(base, cands, K, select="max")
    scored = torch.isfinite(out)
    assert 0 < int(scored.sum()) < len(cands) and scorer.queries + len(cands) == scorer.budget.exact_queries + \
        len(cands) and scorer.queries == int(scored.sum()) + len(cands)  # audit: every candidate scored once more
    assert torch.allclose(out[scored], exact[scored], rtol=1e-5, atol=1e-6)
    assert scorer.budget.screened == len(cands) and scorer.budget.as_record()["screened"] == len(cands)
    record = scorer.screen_record()
    assert record["screen_choices"] == 1 and 0 < record["screen_exact_fraction"] < 1 and "screen_misses" in record
    plain = Scorer(tiny, 16384)
    assert torch.equal(plain.swap_nll(base, cands, K, select="max"), exact)  # no screen: exact, as before
    assert plain.screen_record() == {} and "screened" not in plain.budget.as_record()


def test_batch_tokens_auto_finds_a_batch_that_runs_and_caches_it(tiny, monkeypatch):
    assert TaskConfig(threshold=0.15, batch_tokens="auto").batch_tokens == "auto"
    with pytest.raises(ValueError, match="at least 64"):
        TaskConfig(threshold=0.15, batch_tokens=10)
    monkeypatch.setattr(scoring, "AUTO_CPU_TOKENS", (256, 1024))
    scoring._AUTO_TOKENS.pop(tiny.model, None)
    scoring._FASTEST_CPU_TOKENS.pop(tiny.model, None)
    try:
        scorer = Scorer(tiny, "auto")
        assert scorer.batch_tokens in (256, 1024)
        monkeypatch.setattr(scoring, "_trial", lambda *a: pytest.fail("timed again: not cached"))
        assert Scorer(tiny, "auto").batch_tokens == scorer.batch_tokens
        base, cands = swaps(4096)
        assert torch.allclose(scorer.nll(cands, K), Scorer(tiny, 16384).nll(cands, K), rtol=1e-5, atol=1e-6)
    finally:  # other tests' scorers keep the default cap
        scoring._AUTO_TOKENS.pop(tiny.model, None)
        scoring._FASTEST_CPU_TOKENS.pop(tiny.model, None)


def test_a_bf16_draft_only_where_bf16_is_native(tiny, monkeypatch):
    """The screen's default bf16 draft is built where bf16 is native and refused elsewhere (emulated it would cost
    more than the exact scores it saves), with the key and the fix."""
    import harness.attacks

    base, cands = swaps(64)
    monkeypatch.setattr(harness.attacks, "native_bf16", lambda device: False)
    with pytest.raises(HarnessError, match=r"screen.dtype: bfloat16 on a cpu without native bf16.*fix: `dtype: f"):
        Scorer(tiny, 16384, ScreenConfig(draft_layers=1)).swap_nll(base, cands, K, select="max")
    monkeypatch.setattr(harness.attacks, "native_bf16", lambda device: True)
    scorer = Scorer(tiny, 16384, ScreenConfig(draft_layers=1))
    assert next(scorer.draft().parameters()).dtype == torch.bfloat16


def test_hotflip_with_a_screen_keeps_only_exactly_scored_swaps(tiny):
    from harness.attacks import Example, allowed_tokens
    from harness_plugins.attacks.hotflip import flip_search, gradient_proposer

    gen = torch.Generator().manual_seed(3)
    ex = Example("doc", (0,), tuple(torch.randint(10, 4000, (16,), generator=gen).tolist()),
                 tuple(torch.randint(10, 4000, (8,), generator=gen).tolist()))
    scorer = Scorer(tiny, 16384, ScreenConfig(draft_layers=1, probe_factor=8, r=16, dtype=DRAFT_DTYPE))
    allowed = allowed_tokens(tiny, TaskConfig(threshold=0.15).vocab)
    out = flip_search(scorer, ex, 3, gradient_proposer(scorer, allowed, 8, 16))
    assert scorer.budget.screened > 0 and scorer.queries < 1 + out.steps * 16  # fewer exact scores than swaps
    exact = float(Scorer(tiny, 16384).nll(torch.tensor([out.ids]), 8)[0])
    assert out.nll_after == pytest.approx(exact, rel=1e-5) and out.nll_after >= out.nll_before
    assert all(math.isfinite(c) for c in out.changes)
    # the first-order estimates stay paired with the exact changes (the record's rank correlation needs the pairs)
    assert len(out.estimates) == len(out.changes) < out.steps * 16
