"""The public attack toolkit (``harness.attacks``): what every attack shares: the task, the vocabulary filter, gradients, exact scoring, records and summary metrics.

The task: a document's first ``context_tokens`` tokens are the context, the next ``continuation_tokens`` the
continuation; the attacker edits tokens it may touch (context tokens for HotFlip, a prepended trigger for UAT) to
raise the model's mean NLL of the continuation. An attack succeeds on an example when the relative NLL increase
``(after - before) / before`` exceeds ``threshold``; :func:`summarize` also stores the success rate at every threshold
of a grid, so a report can show the whole curve and no single threshold decides a comparison.

Fairness: documents, splits, budgets and random streams depend on the suite (seed, document id...), never on the
model, so every model of a suite faces the same examples and the same random draws (:func:`attack_rng`).
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from .api import LoadedModel, MetricSpec
from .config import PluginConfig
from .context import StageContext, derive_seed
from .data import Document
from .errors import HarnessError
from .scoring import continuation_nll, logits_tail_kwarg, swap_nll

__all__ = [
    "ATTACK_METRICS", "CURVE_THRESHOLDS", "Example", "Scorer", "TaskConfig", "VocabFilter", "allowed_tokens", "attack_rng",
    "continuation_nll", "example_record", "make_examples", "random_allowed", "relative_increase", "select_examples",
    "spearman", "success_curve", "summarize", "swap_nll",
]

#: Thresholds of the stored success curve (relative NLL increase): 0, 2.5%, ..., 100%.
CURVE_THRESHOLDS = [round(0.025 * i, 3) for i in range(41)]
_PRINTABLE = set(string.printable) - set("\x0b\x0c")


class VocabFilter(PluginConfig):
    """Which tokens an attack may insert."""

    #: Never insert special tokens (end-of-text, padding...).
    exclude_special: bool = True
    #: Only tokens that decode to printable ASCII (letters, digits, punctuation, space, tab, newline).
    ascii_only: bool = True
    #: If set, only these tokens (as they decode, e.g. `" the"`) are allowed.
    allow_list: list[str] | None = None


class TaskConfig(PluginConfig):
    """Options shared by every attack on the continuation NLL."""

    context_tokens: int = Field(default=32, ge=1)
    continuation_tokens: int = Field(default=32, ge=1)
    #: Put the end-of-text token first (as the perplexity metric does); never editable.
    prefix_eos: bool = True
    vocab: VocabFilter = VocabFilter()
    #: Relative NLL increase above which an example counts as a success.
    threshold: float = Field(default=0.15, ge=0)
    #: Tokens per forward pass when scoring candidates (batch size x length): the memory budget.
    batch_tokens: int = Field(default=16384, ge=64)


@dataclass(frozen=True)
class Example:
    id: str
    prefix: tuple[int, ...]  # end-of-text or nothing: never edited
    context: tuple[int, ...]
    continuation: tuple[int, ...]

    def ids(self, context: Sequence[int] | None = None, trigger: Sequence[int] = ()) -> list[int]:
        """The token sequence fed to the model: prefix + trigger + (edited) context + continuation."""
        return [*self.prefix, *trigger, *(self.context if context is None else context), *self.continuation]


def make_examples(docs: Sequence[Document], model: LoadedModel, task: TaskConfig, n: int | None = None,
                  where: str = "data") -> list[Example]:
    """The first ``n`` documents (all if None) long enough for context + continuation, split into examples.

    Shorter documents are skipped the same way for every model that shares a tokenizer.
    """
    tok = model.tokenizer
    prefix: tuple[int, ...] = ()
    if task.prefix_eos:
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        if eos is None:
            raise HarnessError(f"{where}: the tokenizer of model '{model.name}' has no end-of-text token; fix: set "
                               "`prefix_eos: false`")
        prefix = (eos,)
    need = task.context_tokens + task.continuation_tokens
    if len(prefix) + need > model.max_length:
        raise HarnessError(f"{where}: context_tokens + continuation_tokens = {need} exceeds the {model.max_length} "
                           f"positions of model '{model.name}'; fix: make them smaller")
    examples = []
    for doc in docs:
        ids = tok(doc.text, add_special_tokens=False)["input_ids"]
        if len(ids) < need:
            continue
        examples.append(Example(doc.id, prefix, tuple(ids[:task.context_tokens]),
                                tuple(ids[task.context_tokens:need])))
        if n is not None and len(examples) == n:
            break
    if n is not None and len(examples) < n:
        raise HarnessError(f"{where}: only {len(examples)} of the documents have >= {need} tokens, {n} needed; fix: "
                           "raise the source's `limit` or lower the example count")
    if not examples:
        raise HarnessError(f"{where}: no document has >= {need} tokens; fix: lower context_tokens/continuation_tokens")
    return examples


def select_examples(examples: list[Example], n: int | None, sample: Literal["first", "seeded"],
                    ctx: StageContext) -> list[Example]:
    """``n`` examples: the first ones, or a sample drawn by the seed alone (the same sample for every model and every
    attack of the suite, so an attack and its control face the same documents)."""
    if n is None or n >= len(examples):
        return examples
    if sample == "first":
        return examples[:n]
    order = torch.randperm(len(examples), generator=attack_rng(ctx, "documents", len(examples), n)).tolist()
    return [examples[i] for i in sorted(order[:n])]


def attack_rng(ctx: StageContext, *key: Any) -> torch.Generator:
    """Randomness keyed by (seed, key) alone, unlike ``ctx.rng`` (which also keys by stage, hence by model): every
    model and every attack of a suite draw the same numbers for the same key at a seed (an attack and its random
    control start from the same triggers, for instance), and a resumed stage draws them again."""
    return torch.Generator().manual_seed(derive_seed(ctx.seed, "attacks", *key))


# -- vocabulary ------------------------------------------------------------------------------------------------------

def allowed_tokens(model: LoadedModel, vocab: VocabFilter) -> torch.Tensor:
    """Boolean mask over the embedding rows: True where the attack may insert the token."""
    tok = model.tokenizer
    n_rows = model.model.get_input_embeddings().weight.shape[0]
    n_tok = min(len(tok), n_rows)  # embedding rows past the tokenizer (Pythia pads to 50304) are never allowed
    mask = torch.zeros(n_rows, dtype=torch.bool)
    special = set(tok.all_special_ids) if vocab.exclude_special else set()
    allow = set(vocab.allow_list) if vocab.allow_list is not None else None
    texts = tok.batch_decode([[i] for i in range(n_tok)])
    for i, text in enumerate(texts):
        if i in special or not text or "\ufffd" in text:  # empty or a partial UTF-8 byte
            continue
        if vocab.ascii_only and not set(text) <= _PRINTABLE:
            continue
        if allow is not None and text not in allow:
            continue
        mask[i] = True
    if not mask.any():
        raise HarnessError(f"vocab filter allows no token of model '{model.name}'; fix: relax `vocab:` "
                           "(ascii_only, allow_list)")
    return mask


def random_allowed(allowed: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` token ids drawn uniformly (with replacement) from the allowed ones."""
    ids = allowed.nonzero()[:, 0]
    return ids[torch.randint(len(ids), (n,), generator=gen)]


# -- the model: exact scores and first-order scores -------------------------------------------------------------------

class Scorer:
    """Exact continuation NLL of candidate sequences in batched forward passes; counts the queries spent."""

    def __init__(self, model: LoadedModel, batch_tokens: int) -> None:
        self.model = model.model
        self.batch_tokens = batch_tokens
        pad = model.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else 0
        self.queries = 0  # sequences scored exactly (one forward pass each, batched or not)
        self.gradient_calls = 0  # sequences run forward + backward for a gradient
        self._embeddings: torch.Tensor | None = None
        self._embeddings_f32: torch.Tensor | None = None
        self._prefixes: dict = {}  # swap_nll's cached keys and values of the last base and its best candidate

    def nll(self, sequences: torch.Tensor | Sequence[Sequence[int]], n_scored: int) -> torch.Tensor:
        self.queries += len(sequences)
        return continuation_nll(self.model, sequences, n_scored, self.batch_tokens, self.pad_id)

    def swap_nll(self, base: torch.Tensor, candidates: torch.Tensor, n_scored: int) -> torch.Tensor:
        """``nll(candidates, n_scored)`` for edits of ``base`` (``[T]``, or ``[N, T]``: one per candidate): the same
        scores and queries (one per candidate), computing only what follows each candidate's first edit where that
        saves time (see ``harness.scoring.swap_nll``). The keys and values of this base and of its best candidate
        are kept for the next call (a greedy search's next base is one of them)."""
        self.queries += len(candidates)
        return swap_nll(self.model, base, candidates, n_scored, self.batch_tokens, memo=self._prefixes)

    @property
    def embeddings(self) -> torch.Tensor:
        """Every token's input embedding ``[V, d]``, as the model's embedding layer produces it (some layers scale)."""
        if self._embeddings is None:
            layer = self.model.get_input_embeddings()
            with torch.no_grad():
                rows = torch.arange(layer.weight.shape[0], device=layer.weight.device)
                self._embeddings = layer(rows).detach()
                self._embeddings_f32 = self._embeddings.float()
        return self._embeddings

    def token_gradients(self, ids: torch.Tensor, n_scored: int, positions: Sequence[int]) -> torch.Tensor:
        """Gradient of the continuation loss w.r.t. the one-hot input at ``positions``, averaged over the rows.

        ``ids`` is ``[B, T]``; the loss of a row is its mean continuation NLL. Returns ``[len(positions), V]``
        (float32, CPU): entry ``[p, v]`` is the first-order change of the loss when token ``v`` is put at position
        ``positions[p]``, up to the same constant for every ``v`` (the gradient dotted with the current token's
        embedding; subtract ``grad[p, current]`` to get the estimated loss change of the swap).
        """
        self.gradient_calls += len(ids)
        emb_matrix = self.embeddings
        ids = ids.to(emb_matrix.device)
        embeds = emb_matrix[ids].detach().requires_grad_(True)
        kwarg = logits_tail_kwarg(self.model)  # only the positions that predict the continuation
        with torch.enable_grad():
            logits = self.model(inputs_embeds=embeds, **({kwarg: n_scored + 1} if kwarg else {})).logits
            logits = logits[:, -n_scored - 1:-1]
            loss = F.cross_entropy(logits.float().transpose(1, 2), ids[:, -n_scored:], reduction="none").mean(1)
            (grad,) = torch.autograd.grad(loss.mean(), embeds)
        pos = torch.as_tensor(list(positions), device=grad.device)
        # d loss / d onehot[p, v] = grad_embedding[p] . embedding[v]  (the HotFlip linearisation)
        return (grad[:, pos].sum(0).float() @ self._embeddings_f32.T).cpu()  # type: ignore[union-attr]


# -- records and summary metrics ---------------------------------------------------------------------------------------

def relative_increase(before: float, after: float) -> float:
    return (after - before) / before if before > 0 else 0.0


def example_record(example_id: str, before: float, after: float, threshold: float, **fields: Any) -> dict[str, Any]:
    """One per-example record with the fields every attack writes (and any attack-specific ``fields``)."""
    if not (math.isfinite(before) and math.isfinite(after)):
        raise HarnessError(f"non-finite continuation NLL on example {example_id}; check the model's dtype/weights")
    rel = relative_increase(before, after)
    return {"id": example_id, "nll_before": before, "nll_after": after, "relative_increase": rel,
            "success": rel > threshold, **fields}


def success_curve(increases: Sequence[float], thresholds: Sequence[float] = CURVE_THRESHOLDS) -> dict[str, list]:
    rel = np.asarray(increases, dtype=float)
    return {"thresholds": list(thresholds), "success_rate": [float((rel > t).mean()) if len(rel) else 0.0
                                                              for t in thresholds]}


def summarize(records: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """The summary every attack reports (same keys and definitions for every attack and model)."""
    rel = [r["relative_increase"] for r in records]
    mean = (lambda xs: float(np.mean(xs)) if len(xs) else float("nan"))
    return {
        "success_rate": float(np.mean([x > threshold for x in rel])) if rel else float("nan"),
        "threshold": threshold,
        "mean_relative_increase": mean(rel),
        "median_relative_increase": float(np.median(rel)) if rel else float("nan"),
        "mean_nll_before": mean([r["nll_before"] for r in records]),
        "mean_nll_after": mean([r["nll_after"] for r in records]),
        "n_examples": len(records),
        "mean_queries": mean([r.get("queries", 0) for r in records]),
        "success_curve": success_curve(rel),
    }


#: What :func:`summarize` reports, declared (an attack's ``declared_metrics`` returns these plus its own). Success
#: and NLL increase read as the attacker's numbers: higher means the attack did better (the model is less robust).
ATTACK_METRICS = [
    MetricSpec("success_rate", "Success (%)", field="success", scale=100, digits=1),
    MetricSpec("threshold", "Success threshold", aggregation="none", show=False),
    MetricSpec("mean_relative_increase", "NLL incr. (%)", field="relative_increase", scale=100, digits=1),
    MetricSpec("median_relative_increase", "Median NLL incr. (%)", field="relative_increase", aggregation="median",
               scale=100, digits=1),
    MetricSpec("mean_nll_before", "NLL before", field="nll_before", show=False),
    MetricSpec("mean_nll_after", "NLL after", field="nll_after", show=False),
    MetricSpec("n_examples", "Examples", aggregation="none", digits=0, show=False),
    MetricSpec("mean_queries", "Queries / example", field="queries", digits=1, budget=True),
    MetricSpec("success_curve", "Success curve", field="relative_increase", aggregation="none", kind="curve",
               show=False),
]


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks starting at 0, ties sharing their average rank."""
    v = np.asarray(values, dtype=float)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v))
    values, counts = np.unique(v, return_counts=True)
    for value in values[counts > 1]:
        ranks[v == value] = ranks[v == value].mean()
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when undefined (fewer than 3 points, or constant)."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])
