"""Metric plugin ``perplexity``: token-weighted perplexity of documents, each scored on its own.

Each document is tokenised without special tokens, prefixed with the end-of-text token (as lm-eval's
``loglikelihood_rolling`` does, so its first token is scored too), and covered by rolling windows of the model's
context: the first window predicts ``max_length`` tokens, each later one the next ``stride`` tokens with a full
window of context. ``stride == max_length`` (the default) reproduces lm-eval's numbers; a smaller stride gives every
token more context at more compute. Windows of many documents share batched forward passes.
"""

from __future__ import annotations

import math
import re
from typing import Any

from pydantic import Field

from harness import (Batch, Document, DocumentSource, HarnessError, LoadedModel, MetricPlugin, MetricSpec,
                     NonFiniteLoss, PlanInputs, PluginConfig, StageContext, Workload, hookimpl, load_documents)
from harness.loop import run_chunks
from harness.scoring import HEAD_CHUNK_POSITIONS, rolling_windows, score_windows


class PerplexityConfig(PluginConfig):
    #: The documents scored, each on its own (rolling windows over each document).
    data: DocumentSource
    #: Window length in tokens (default: the model's context length).
    max_length: int | None = Field(default=None, ge=2)
    #: New tokens predicted per window after the first (default: max_length, i.e. lm-eval's rolling windows).
    stride: int | None = Field(default=None, ge=1)
    #: Condition the first token on the end-of-text token (lm-eval's convention); otherwise it is not scored.
    prefix_eos: bool = True
    #: Tokens per forward pass (batch size x padded length): the memory budget.
    batch_tokens: int = Field(default=16384, ge=16)
    #: Documents scored between two durable checkpoints of the per-document records.
    chunk_documents: int = Field(default=32, ge=1)


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))  # lm-eval's word count for word_perplexity


class Perplexity(MetricPlugin[PerplexityConfig]):
    """Token-weighted perplexity over documents (rolling windows, batched; agrees with lm-eval)."""

    name = "perplexity"
    seeded = False  # a deterministic function of model and documents

    def declared_metrics(self) -> list[MetricSpec]:
        per_token = {"field": "nll_sum", "weight": "tokens"}
        return [
            MetricSpec("perplexity", "Perplexity", aggregation="token_weighted_exp", higher_is_better=False, **per_token),
            MetricSpec("mean_nll", "Mean NLL", aggregation="token_weighted", higher_is_better=False, **per_token),
            MetricSpec("tokens", "Tokens", aggregation="none", digits=0, show=False),
            MetricSpec("documents", "Documents", aggregation="none", digits=0, show=False),
            MetricSpec("word_perplexity", "Word perplexity", aggregation="none", higher_is_better=False),
            MetricSpec("byte_perplexity", "Byte perplexity", aggregation="none", higher_is_better=False, digits=3),
            MetricSpec("bits_per_byte", "Bits per byte", aggregation="none", higher_is_better=False, digits=3),
            MetricSpec("max_length", "Window", aggregation="none", digits=0, show=False),
            MetricSpec("stride", "Stride", aggregation="none", digits=0, show=False),
        ]

    def evaluate(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        tok = model.tokenizer
        max_length = min(cfg.max_length or model.max_length, model.max_length)
        stride = min(cfg.stride or max_length, max_length)
        docs = load_documents(cfg.data)
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        if cfg.prefix_eos and eos is None:
            raise ValueError("the tokenizer has no end-of-text token; set `prefix_eos: false`")
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0

        def score_chunk(chunk: list[Document]) -> list[dict[str, Any]]:
            """Every document of the chunk, its windows in shared batched passes (the core's loop computes a chunk
            whole, so a document is always scored in the same batch: bit-identical results on resume)."""
            seqs = [([eos] if cfg.prefix_eos else []) + tok(d.text, add_special_tokens=False)["input_ids"]
                    for d in chunk]
            windows, nexts, owner = [], [], []
            for j, seq in enumerate(seqs):
                scored = 0
                for w in rolling_windows(seq, max_length, stride):
                    scored += w.n_scored
                    windows.append(w)
                    nexts.append(seq[scored])  # the last target of this window
                    owner.append(j)
            nll = score_windows(model.model, windows, nexts, cfg.batch_tokens, pad)
            per_doc: dict[int, list] = {}
            for part, j in zip(nll, owner):
                per_doc.setdefault(j, []).append(part)
            records = []
            for j, d in enumerate(chunk):
                total = float(sum(float(p.sum()) for p in per_doc.get(j, [])))
                n_tok = sum(len(p) for p in per_doc.get(j, []))
                if not math.isfinite(total):
                    raise NonFiniteLoss(f"non-finite NLL on document {d.id}; check the model's dtype/weights")
                records.append({"id": d.id, "tokens": n_tok, "nll_sum": total,
                                "nll_mean": total / n_tok if n_tok else None,
                                "words": count_words(d.text), "bytes": len(d.text.encode("utf-8"))})
            return records

        records = run_chunks(ctx, docs, cfg.chunk_documents, score_chunk, label="documents")
        return summarize(records, max_length, stride)

    def plan(self, inputs: PlanInputs) -> Workload:
        """Tokens fed through the model (``harness plan``): each document's rolling windows, from the config."""
        cfg = self.config
        docs = inputs.documents(cfg.data)
        max_length = min(cfg.max_length or inputs.shape.max_length, inputs.shape.max_length)
        stride = min(cfg.stride or max_length, max_length)
        tokens = docs.tokens_per_document + int(cfg.prefix_eos)
        # The first window predicts up to max_length tokens; each later one `stride` more, fed max_length tokens.
        later = math.ceil(max(0.0, tokens - 1 - max_length) / stride)
        fed = min(tokens - 1, max_length) + later * max_length
        return Workload(
            forward_tokens=docs.documents * fed, context=int(min(max_length, tokens)),
            # Scored positions are projected to the vocabulary a slice at a time (harness.scoring.score_windows).
            # A batch never holds more windows than the documents have (a huge budget is not a huge batch).
            batches=[Batch(max(1, min(cfg.batch_tokens // max_length, math.ceil(docs.documents * (1 + later)))),
                           max_length, label="scoring",
                           logits_at_once=HEAD_CHUNK_POSITIONS)],
            disk_bytes=200 * docs.documents, disk_note="per-document records",
            notes=[f"{docs.documents:,} documents x ~{fed:,.0f} tokens ({1 + later:.0f} window(s) of <= {max_length}, "
                   f"stride {stride})"])


def summarize(records: list[dict[str, Any]], max_length: int, stride: int) -> dict[str, Any]:
    """What the declarations do not define (perplexity and mean NLL, token-weighted, the core computes)."""
    nll = sum(r["nll_sum"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    words = sum(r["words"] for r in records)
    nbytes = sum(r["bytes"] for r in records)
    if not tokens or not words or not nbytes:
        raise HarnessError("perplexity: the documents gave no tokens to score (an empty tokenizer or empty texts); "
                           "fix: check the model's tokenizer files and the data's `text_field`")
    return {"tokens": tokens, "documents": len(records),
            "word_perplexity": math.exp(nll / words), "byte_perplexity": math.exp(nll / nbytes),
            "bits_per_byte": nll / nbytes / math.log(2), "max_length": max_length, "stride": stride}


@hookimpl
def harness_metrics() -> list[type]:
    return [Perplexity]
