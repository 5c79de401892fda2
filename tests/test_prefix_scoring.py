"""swap_nll: scoring edits of a base sequence from its cached prefix gives the plain scores, feeds fewer positions,
and falls back to the plain path where a cache cannot be cropped exactly."""

from __future__ import annotations

import pytest
import torch

from harness import scoring
from harness.scoring import continuation_nll, swap_nll

T, K = 41, 16  # the quick suite's geometry: end-of-text + 24 context + 16 continuation tokens


def random_model(kind: str) -> torch.nn.Module:
    """A tiny randomly initialised model of each architecture family (no download)."""
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                  max_position_embeddings=128)
    if kind == "gpt_neox":
        config = transformers.GPTNeoXConfig(**common, rotary_pct=0.25)
        return transformers.GPTNeoXForCausalLM(config).eval()
    if kind == "llama":
        config = transformers.LlamaConfig(**common, num_key_value_heads=2)
        return transformers.LlamaForCausalLM(config).eval()
    # Sliding window shorter than the sequence: cropping its cache is not exact, so swap_nll must not use one.
    config = transformers.MistralConfig(**common, num_key_value_heads=2, sliding_window=8)
    return transformers.MistralForCausalLM(config).eval()


def swaps(vocab: int, n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A base sequence and ``n`` edits of it: single swaps anywhere in the context, a double swap, the base itself
    and an edit inside the continuation."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(2, vocab, (T,), generator=gen)
    cands = base.repeat(n, 1)
    where = torch.randint(1, T - K, (n,), generator=gen)
    cands[torch.arange(n), where] = torch.randint(2, vocab, (n,), generator=gen)
    cands[0] = base
    cands[1, T - 3] = (base[T - 3] + 1) % vocab
    cands[2, [3, 20]] = 1
    return base, cands


class FedPositions:
    """Counts the positions fed to a model's forward passes (to tell the prefix path from the plain one)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.positions = 0
        self.starts: list[int] = []
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids")
        if ids is None:  # a gradient pass (inputs_embeds)
            return
        self.positions += ids.numel()
        pos = kwargs.get("position_ids")
        self.starts.append(0 if pos is None else int(pos[0, 0]))

    def __enter__(self) -> FedPositions:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def check_exact(model: torch.nn.Module, vocab: int) -> None:
    base, cands = swaps(vocab)
    plain = continuation_nll(model, cands, K)
    assert (swap_nll(model, base, cands, K) - plain).abs().max() <= 1e-5  # the device's default plan
    with FedPositions(model) as fed:  # passes costing nothing: a group (and pass) per distinct edit position
        fast = swap_nll(model, base, cands, K, overhead_tokens=0)
    assert (fast - plain).abs().max() <= 1e-5
    assert fed.positions < 0.8 * len(cands) * (T - 1)  # the prefix path ran: much less than the plain path feeds
    assert max(fed.starts) > 0
    # Candidates of several bases (one per row), in one call.
    base2, cands2 = swaps(vocab, seed=1)
    bases = torch.cat([base.expand(len(cands), -1), base2.expand(len(cands2), -1)])
    both = torch.cat([cands, cands2])
    fast = swap_nll(model, bases, both, K, batch_tokens=10 * T, overhead_tokens=0)  # 10 rows per pass at most
    assert (fast - continuation_nll(model, both, K)).abs().max() <= 1e-5


def test_prefix_reuse_is_exact_on_the_tiny_model(tiny):
    check_exact(tiny.model, 4096)


@pytest.mark.parametrize("kind", ["gpt_neox", "llama"])
def test_prefix_reuse_is_exact_on_random_models(kind):
    check_exact(random_model(kind), 512)


def test_sliding_window_cache_falls_back_to_the_plain_path():
    model = random_model("mistral")
    base, cands = swaps(512)
    with FedPositions(model) as fed:
        fast = swap_nll(model, base, cands, K, overhead_tokens=0)
    assert (fast - continuation_nll(model, cands, K)).abs().max() <= 1e-5
    assert fed.starts[-1] == 0  # scored from position 0 after the prefix pass showed an unusable cache


def test_plan_falls_back_when_reuse_saves_nothing(tiny):
    base, cands = swaps(4096)
    cands[3, 1] = 5  # one candidate edited at position 1: a single group would start there
    with FedPositions(tiny.model) as fed:
        swap_nll(tiny.model, base, cands, K, overhead_tokens=10 ** 6)  # passes so dear that one pass is best
    assert fed.starts == [0]


def test_memo_spares_the_prefix_pass_of_the_next_base(tiny):
    base, cands = swaps(4096)
    memo: dict = {}
    first = swap_nll(tiny.model, base, cands, K, overhead_tokens=0, memo=memo)
    assert (first - continuation_nll(tiny.model, cands, K)).abs().max() <= 1e-5
    best = cands[int(first.argmax())]
    assert set(memo) == {tuple(base.tolist()), tuple(best.tolist())}
    for again in (best, base):  # a kept swap's sequence, or the same one after a failed step
        nxt = again.repeat(len(cands), 1)
        nxt[:, 10:] = cands[:, 10:]  # edits from position 10 on
        with FedPositions(tiny.model) as fed:
            scores = swap_nll(tiny.model, again, nxt, K, overhead_tokens=0, memo=memo)
        assert min(fed.starts) > 0  # no prefix pass: every pass fed from an edit
        assert (scores - continuation_nll(tiny.model, nxt, K)).abs().max() <= 1e-5
        memo.clear()
        swap_nll(tiny.model, base, cands, K, overhead_tokens=0, memo=memo)


def test_hotflip_spends_the_same_queries_and_finds_the_same_flips(tiny, monkeypatch):
    from harness import attacks as common
    from harness.attacks import Example, Scorer, VocabFilter, allowed_tokens
    from harness_plugins.attacks.hotflip import flip_search, gradient_proposer

    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(10, 4000, (T - 1,), generator=gen).tolist()
    example = Example("x", (0,), tuple(tokens[:T - 1 - K]), tuple(tokens[T - 1 - K:]))
    allowed = allowed_tokens(tiny, VocabFilter())

    def run():
        scorer = Scorer(tiny, 16384)
        out = flip_search(scorer, example, 3, gradient_proposer(scorer, allowed, K, 16))
        return out, scorer.queries

    monkeypatch.setitem(scoring.FORWARD_OVERHEAD_TOKENS, "cpu", 0)  # the prefix path on every step
    with FedPositions(tiny.model) as fed:
        fast, fast_queries = run()
    assert max(fed.starts) > 0
    monkeypatch.setattr(common, "swap_nll", lambda model, base, cands, k, budget, **_: continuation_nll(
        model, cands, k, budget))
    plain, plain_queries = run()
    assert fast_queries == plain_queries == 1 + 3 * 16
    assert fast.flipped and fast.flipped == plain.flipped and fast.ids == plain.ids
    assert abs(fast.nll_after - plain.nll_after) <= 1e-5
    assert max(abs(a - b) for a, b in zip(fast.changes, plain.changes)) <= 1e-5


@pytest.mark.parametrize("kind", ["gpt_neox", "llama", "mistral"])
def test_gradient_pass_from_a_cached_prefix_gives_the_plain_gradient(kind):
    """token_gradients with a suffix after a 24-token prompt: the prompt's keys and values come from a cache (fed
    once, without gradient), the gradient is the plain pass's, and the pass runs forward and backward on the suffix
    and target only (fewer tokens and FLOPs counted). Where the cache cannot be reused (a sliding window shorter
    than the sequence) or the prefix is short, the plain pass runs."""
    from harness.api import LoadedModel
    from harness.attacks import Scorer

    model = random_model(kind)
    tok = type("Tok", (), {"pad_token_id": 0})()
    loaded = LoadedModel(name=kind, model=model, tokenizer=tok)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 512, (2, 48), generator=gen)
    positions, k = list(range(24, 44)), 4
    plain, cached = Scorer(loaded, 4096), Scorer(loaded, 4096)
    scoring_min = scoring.MIN_GRADIENT_PREFIX
    try:
        scoring.MIN_GRADIENT_PREFIX = 10 ** 6  # the plain pass
        want = plain.token_gradients(ids, k, positions)
    finally:
        scoring.MIN_GRADIENT_PREFIX = scoring_min
    for _ in range(2):  # the second call reuses the memo: no second prefix pass
        got = cached.token_gradients(ids, k, positions)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert cached.gradient_calls == 2 * plain.gradient_calls == 4
    if kind == "mistral":  # sliding window 8 < 48: not exact to reuse; the prefix pass that found it out ran once
        assert cached.budget.tokens == 2 * plain.budget.tokens + 2 * 24
    else:
        assert cached.budget.gradient_tokens == 2 * 2 * (48 - 24)
        assert cached.budget.tokens == 2 * 24 + 2 * 2 * 24  # one prefix pass, then two passes on the rest
        assert cached.budget.flops < 2 * plain.budget.flops
    short = Scorer(loaded, 4096).token_gradients(ids, k, list(range(2, 44)))  # a prefix of 2: no cache
    assert short.shape == (42, model.config.vocab_size)


def test_memo_keeps_the_lowest_candidate_for_a_minimising_search(tiny):
    base, cands = swaps(4096)
    memo: dict = {}
    scores = swap_nll(tiny.model, base, cands, K, overhead_tokens=0, memo=memo, keep="min")
    low, high = cands[int(scores.argmin())], cands[int(scores.argmax())]
    assert set(memo) == {tuple(base.tolist()), tuple(low.tolist())}
    assert tuple(high.tolist()) not in memo
    nxt = low.repeat(len(cands), 1)
    nxt[:, 10:] = cands[:, 10:]
    with FedPositions(tiny.model) as fed:  # a targeted search's next step, from the kept (lowest) candidate
        again = swap_nll(tiny.model, low, nxt, K, overhead_tokens=0, memo=memo, keep="min")
    assert min(fed.starts) > 0
    assert (again - continuation_nll(tiny.model, nxt, K)).abs().max() <= 1e-5


@pytest.mark.parametrize("overhead", [0, 10 ** 6])  # the prefix path and the plain one
def test_greedy_matches_come_from_the_scoring_pass(tiny, overhead):
    from harness.api import LoadedModel
    from harness.attacks import Scorer

    base, cands = swaps(4096)
    # Continuations the model emits greedily: each candidate's own greedy tail after its context (some match).
    with torch.no_grad():
        for i in range(0, len(cands), 3):
            for p in range(T - K, T):
                cands[i, p] = tiny.model(cands[i:i + 1, :p]).logits[0, -1].argmax()
    matches = torch.zeros(len(cands), dtype=torch.bool)
    swap_nll(tiny.model, base, cands, K, overhead_tokens=overhead, matches=matches)
    _, expected = Scorer(LoadedModel("tiny", tiny.model, tiny.tokenizer), 4096).continuation_scores(cands, K)
    assert matches.tolist() == expected.tolist()
    assert 0 < int(matches.sum()) < len(cands)  # both outcomes occur
