"""Universal strings (``harness.triggers``, part of the public attack toolkit): one string of tokens placed in every
document, before its context (a UAT trigger) or after it (a universal GCG suffix), judged on held-out examples.

What the universal attacks and the transfer matrix share: where the string goes (:func:`with_trigger`,
:func:`triggered_batch`), its held-out records (:func:`evaluate_trigger`), the summary keys of the optimisation's cost
(:func:`optimisation_budget`) and the identity of the vocabulary its ids mean (:func:`tokenizer_fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

import torch

from .api import LoadedModel
from .attacks import Budget, Example, Scorer, attack_progress, example_record
from .context import StageContext
from .loop import run_chunks

__all__ = ["EVAL_CHUNK", "Placement", "evaluate_trigger", "optimisation_budget", "tokenizer_fingerprint",
           "triggered_batch", "with_trigger"]

#: Held-out examples are scored in fixed chunks, so a resumed stage scores each one in the same batch as before.
EVAL_CHUNK = 64
#: Where a universal string goes: before the context (a UAT trigger) or after it (a universal GCG suffix).
Placement = Literal["prefix", "suffix"]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of a vocabulary: a trigger's ids mean the same tokens exactly when the fingerprints agree."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]


def with_trigger(example: Example, trigger: Sequence[int], placement: Placement = "prefix") -> list[int]:
    if placement == "prefix":
        return example.ids(trigger=trigger)
    return [*example.prefix, *example.context, *trigger, *example.continuation]


def triggered_batch(examples: Sequence[Example], triggers: Sequence[Sequence[int]],
                    placement: Placement = "prefix") -> torch.Tensor:
    """``[len(triggers) * len(examples), T]``: every example with every trigger (trigger-major)."""
    return torch.tensor([with_trigger(ex, t, placement) for t in triggers for ex in examples])


def evaluate_trigger(scorer: Scorer, examples: Sequence[Example], trigger: Sequence[int], model: LoadedModel,
                     ctx: StageContext, threshold: float, id_prefix: str = "", placement: Placement = "prefix",
                     **fields: Any) -> list[dict[str, Any]]:
    """Record NLL with and without ``trigger`` (before the context, or after it with ``placement: suffix``) on every
    example not recorded yet, ``EVAL_CHUNK`` examples per batch (the core's loop: resumable, budget per chunk shared
    equally); returns this trigger's records."""
    tok = model.tokenizer
    k = len(examples[0].continuation)

    def score_chunk(chunk: list[Example]) -> list[dict[str, Any]]:
        before = scorer.nll(torch.tensor([ex.ids() for ex in chunk]), k)
        after = scorer.nll(triggered_batch(chunk, [list(trigger)], placement), k)
        return [example_record(id_prefix + ex.id, b, a, threshold, trigger_ids=list(trigger),
                               adversarial_text=tok.decode(with_trigger(ex, trigger, placement)[len(ex.prefix):-k]),
                               **fields)
                for ex, b, a in zip(chunk, before.tolist(), after.tolist())]

    return run_chunks(ctx, examples, EVAL_CHUNK, score_chunk, scorer=scorer, key=lambda ex: id_prefix + ex.id,
                      label=f"held-out {id_prefix.rstrip('/')}".strip(),
                      show=lambda records: attack_progress([r for r in records if str(r["id"]).startswith(id_prefix)]))


def optimisation_budget(budget: Budget) -> dict[str, Any]:
    """What optimising a universal string spent (once for all held-out examples; the records hold the evaluation's
    cost)."""
    return {"optimisation_queries": budget.exact_queries + budget.gradient_calls,
            "gradient_calls": budget.gradient_calls, "optimisation_tokens": budget.tokens,
            "optimisation_gradient_tokens": budget.gradient_tokens, "optimisation_flops": budget.flops}
