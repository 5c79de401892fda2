"""The perplexity metric against a naive one-token-at-a-time computation and against lm-eval."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.perplexity_vs_lmeval import lmeval_total_nll, our_perplexity
from harness.scoring import rolling_windows, sequence_nll
from harness_plugins.metrics.perplexity import count_words
from tests.conftest import DATA


@pytest.mark.parametrize("n,max_length,stride", [(2, 4, 4), (10, 4, 4), (10, 4, 1), (37, 8, 3), (8, 8, 8), (9, 8, 8)])
def test_rolling_windows_score_every_token_once_with_bounded_context(n, max_length, stride):
    seq = list(range(100, 100 + n))
    windows = rolling_windows(seq, max_length, stride)
    predicted = []
    for w in windows:
        assert 1 <= len(w.ids) <= max_length
        start = seq.index(w.ids[0])
        targets = seq[start + 1:start + 1 + len(w.ids)]
        predicted += targets[len(targets) - w.n_scored:]
    assert predicted == seq[1:]
    for w in windows[1:]:  # later windows keep a full window of context when the sequence allows it
        assert len(w.ids) == min(max_length, seq.index(w.ids[-1]) + 1)


def naive_nll(model, seq: list[int], max_length: int, stride: int) -> list[float]:
    """One forward pass per token, with exactly the context the rolling windows give that token."""
    out = []
    for w in rolling_windows(seq, max_length, stride):
        start = seq.index(w.ids[0]) if len(set(seq)) == len(seq) else None
        assert start is not None
        for k in range(len(w.ids) - w.n_scored, len(w.ids)):
            context = torch.tensor([seq[start:start + k + 1]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=context).logits[0, -1].double(), -1)
            out.append(-logp[seq[start + k + 1]].item())
    return out


@pytest.mark.parametrize("max_length,stride", [(64, 64), (16, 16), (16, 5)])
def test_batched_nll_equals_naive_token_by_token(tiny, max_length, stride):
    seq = list(dict.fromkeys(tiny.tokenizer((DATA / "test.jsonl").read_text()[:2000])["input_ids"]))[:40]
    ours = sequence_nll(tiny.model, seq, max_length, stride, batch_tokens=48)
    naive = naive_nll(tiny.model, seq, max_length, stride)
    assert len(ours) == len(seq) - 1
    assert torch.allclose(ours, torch.tensor(naive, dtype=torch.float64), rtol=1e-4, atol=1e-4)


def test_batch_composition_does_not_change_scores(tiny):
    seq = tiny.tokenizer((DATA / "valid.jsonl").read_text()[:3000])["input_ids"][:300]
    alone = sequence_nll(tiny.model, seq, 64, 16, batch_tokens=64)
    batched = sequence_nll(tiny.model, seq, 64, 16, batch_tokens=4096)
    assert torch.allclose(alone, batched, rtol=1e-5, atol=1e-5)


def test_perplexity_agrees_with_lm_eval_loglikelihood_rolling(tiny):
    import json

    texts = [json.loads(line)["text"] for line in (DATA / "test.jsonl").read_text().splitlines()[:12]]
    ours = our_perplexity(tiny, DATA / "test.jsonl", 12, 256, 2048)
    theirs = lmeval_total_nll(tiny.model, tiny.tokenizer, texts, 256, 4)
    assert ours["documents"] == 12
    assert math.isclose(ours["mean_nll"] * ours["tokens"], theirs, rel_tol=1e-5)
    words = sum(count_words(t) for t in texts)
    assert math.isclose(ours["word_perplexity"], math.exp(theirs / words), rel_tol=1e-4)



def test_vocabulary_projection_in_slices_only_where_the_model_is_body_then_head(tiny, monkeypatch):
    """Scored positions projected a slice at a time (the split path) give the full forward pass's numbers; a model
    whose forward does more than project its last hidden state (here: soft-capped logits) keeps the full pass."""
    import copy

    from harness import scoring

    seq = tiny.tokenizer((DATA / "valid.jsonl").read_text()[:3000])["input_ids"][:300]
    assert scoring._body_and_head(tiny.model) is not None
    monkeypatch.setattr(scoring, "HEAD_CHUNK_POSITIONS", 7)  # many slices, one ending mid-row
    split = sequence_nll(tiny.model, seq, 64, 16, batch_tokens=256)
    plain_model = copy.deepcopy(tiny.model)
    scoring._SPLITS[plain_model] = None  # as if the probe had failed: the full forward pass
    plain = sequence_nll(plain_model, seq, 64, 16, batch_tokens=256)
    assert torch.allclose(split, plain, rtol=1e-5, atol=1e-5)

    capped = copy.deepcopy(tiny.model)
    original = capped.forward

    def soft_capped(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = 5.0 * torch.tanh(out.logits / 5.0)
        return out

    capped.forward = soft_capped
    assert scoring._body_and_head(capped) is None
    distinct = list(dict.fromkeys(seq))[:20]  # naive_nll locates windows by token
    want = torch.tensor(naive_nll(capped, distinct, 16, 16), dtype=torch.float64)
    assert torch.allclose(sequence_nll(capped, distinct, 16, 16), want, atol=1e-4)
