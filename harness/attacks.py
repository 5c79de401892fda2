"""The public attack toolkit (``harness.attacks``): what every attack shares: the task, the vocabulary filter, gradients, exact scoring, records and summary metrics.

The task: a document's first ``context_tokens`` tokens are the context, the next ``continuation_tokens`` the
continuation; the attacker edits tokens it may touch (context tokens for HotFlip, a prepended trigger for UAT) to
raise the model's mean NLL of the continuation. An attack succeeds on an example when the relative NLL increase
``(after - before) / before`` exceeds ``threshold``; :func:`summarize` also stores the success rate at every threshold
of a grid, so a report can show the whole curve and no single threshold decides a comparison.

Fairness: documents, splits, budgets and random streams depend on the suite (seed, document id...), never on the
model, so every model of a suite faces the same examples and the same random draws (:func:`attack_rng`).

Budget: the :class:`Scorer` counts what it spends in a :class:`Budget` (queries, gradient passes, tokens computed,
FLOPs by :class:`ComputeCost`); an attack resets it per example and writes ``budget.as_record()`` into the record,
so every attack reports the same budget fields and :func:`summarize` averages them.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from .api import LoadedModel, MetricSpec
from .config import PluginConfig
from .context import StageContext, derive_seed
from .data import Document, DocumentSource, load_documents
from .errors import HarnessError
from .scoring import continuation_nll, logits_tail_kwarg, swap_nll

#: A loss over the continuation: (logits ``[B, k, V]`` float32 of the positions that predict the last ``k`` tokens,
#: those tokens ``[B, k]``) -> one loss per row ``[B]``. The default (None) is the mean NLL of the ``k`` tokens.
ContinuationLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = [
    "ATTACK_METRICS", "BUDGET_FIELDS", "Budget", "CURVE_THRESHOLDS", "ComputeCost", "ContinuationLoss", "Example",
    "POSITIONS_METRIC", "Scorer", "TaskConfig", "VocabFilter", "allowed_tokens", "attack_rng", "budget_summary",
    "continuation_nll", "disjoint_splits", "example_record", "make_examples", "position_histogram", "random_allowed",
    "relative_increase", "log_ratio", "select_examples", "spearman", "success_curve", "summarize", "swap_nll",
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
    #: Relative NLL increase above which an example counts as a success. No core default: an attack plugin's
    #: config sets one (the built-in attacks share theirs), and a suite may override it.
    threshold: float = Field(ge=0)
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


def disjoint_splits(model: LoadedModel, task: TaskConfig, opt_source: DocumentSource, eval_source: DocumentSource,
                    n_opt: int | None, n_eval: int | None, where: str) -> tuple[list[Example], list[Example]]:
    """A universal attack's optimisation and held-out examples (``n_opt`` and ``n_eval`` of them), refusing splits
    that share an example: a string judged on documents it was optimised on would overstate its success."""
    opt = make_examples(load_documents(opt_source), model, task, n_opt, where=f"{where}.opt_data")
    held_out = make_examples(load_documents(eval_source), model, task, n_eval, where=f"{where}.eval_data")
    seen = {(ex.context, ex.continuation) for ex in opt}
    shared = [ex.id for ex in held_out if (ex.context, ex.continuation) in seen]
    if shared:
        raise HarnessError(f"{where}: {len(shared)} held-out documents (e.g. {shared[0]}) are also in opt_data; fix: "
                           "use disjoint splits (another file or split, or `skip:` past the optimisation documents)")
    return opt, held_out


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
    n_tok = min(len(tok), n_rows)  # embedding rows past the tokenizer (a padded vocabulary) are never allowed
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


# -- compute budget ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ComputeCost:
    """FLOPs per token of one model, by the standard estimate (Kaplan et al. 2020, "Scaling laws", table 1).

    A token run forward costs ``2 N + 2 n_layer context d``: ``N`` is the count of **non-embedding** parameters (the
    input embeddings, position embeddings and the output projection to the vocabulary are left out, as Kaplan et al.
    do: a lookup costs nothing, and the vocabulary projection runs only at the scored positions), ``context`` the
    positions the token's pass attends to, ``d`` the model width. A token also run backward costs three times that
    (``6 N + 6 n_layer context d``).
    """

    non_embedding_params: int
    n_layer: int
    d_model: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> ComputeCost:
        embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if isinstance(head, torch.nn.Module):
            embedding |= {id(p) for p in head.parameters()}
        config = getattr(model, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return cls(non_embedding_params=sum(p.numel() for p in model.parameters() if id(p) not in embedding),
                   n_layer=int(getattr(text, "num_hidden_layers", 0) or 0),
                   d_model=int(getattr(text, "hidden_size", 0) or 0))

    def flops(self, tokens: int, context: int, backward: bool = False) -> float:
        """FLOPs of ``tokens`` positions, each attending to ``context`` positions (forward, or forward + backward)."""
        forward = 2.0 * self.non_embedding_params + 2.0 * self.n_layer * context * self.d_model
        return tokens * forward * (3.0 if backward else 1.0)


@dataclass
class Budget:
    """What an attack spent (on one example, or on optimising a universal trigger), as its :class:`Scorer` counts it.

    ``tokens`` counts the positions the model actually computed: pads in a padded batch are computed and count;
    positions whose keys and values came from a cache (``Scorer.swap_nll``'s prefix reuse) are not and do not.
    """

    #: Sequences scored exactly (one forward pass each, batched or not).
    exact_queries: int = 0
    #: Sequences run forward and backward for a gradient.
    gradient_calls: int = 0
    #: Token positions run forward (those of gradient passes included).
    tokens: int = 0
    #: Of ``tokens``, the positions also run backward.
    gradient_tokens: int = 0
    #: Floating-point operations of all those passes (:class:`ComputeCost`).
    flops: float = 0.0

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)

    def as_record(self, share: int = 1) -> dict[str, Any]:
        """The budget fields of a per-example record (``BUDGET_FIELDS``); ``share``: the number of examples this
        budget was spent on together (a batched evaluation), each record getting its equal part.

        ``queries`` counts every sequence the model ran on: exact scores plus gradient passes (what HotFlip has always
        reported as its queries, so a gradient attack and its gradient-free control compare at equal model calls).
        """
        def part(count: int) -> int | float:
            return count // share if count % share == 0 else count / share

        return {"queries": part(self.exact_queries + self.gradient_calls), "gradient_calls": part(self.gradient_calls),
                "tokens": part(self.tokens), "gradient_tokens": part(self.gradient_tokens), "flops": self.flops / share}

    def state(self) -> dict[str, Any]:
        """JSON-able counters, to save with an attack's resumable state (``Budget(**state)`` restores them)."""
        return asdict(self)


#: The record fields :meth:`Budget.as_record` writes.
BUDGET_FIELDS = ("queries", "gradient_calls", "tokens", "gradient_tokens", "flops")


# -- the model: exact scores and first-order scores -------------------------------------------------------------------

class Scorer:
    """Exact continuation NLL of candidate sequences in batched forward passes; counts what it spends in ``budget``.

    ``queries`` and ``gradient_calls`` read and write ``budget.exact_queries`` and ``budget.gradient_calls``. A pass an
    attack runs itself (on embeddings, say) is counted with :meth:`count_pass`.
    """

    def __init__(self, model: LoadedModel, batch_tokens: int) -> None:
        self.model = model.model
        self.batch_tokens = batch_tokens
        pad = model.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else 0
        self.budget = Budget()
        self.cost = ComputeCost.of(self.model)
        self._embeddings: torch.Tensor | None = None
        self._embeddings_f32: torch.Tensor | None = None
        self._prefixes: dict = {}  # swap_nll's cached keys and values of the last base and its best candidate

    @property
    def queries(self) -> int:
        """Sequences scored exactly (one forward pass each, batched or not)."""
        return self.budget.exact_queries

    @queries.setter
    def queries(self, value: int) -> None:
        self.budget.exact_queries = value

    @property
    def gradient_calls(self) -> int:
        """Sequences run forward + backward for a gradient."""
        return self.budget.gradient_calls

    @gradient_calls.setter
    def gradient_calls(self, value: int) -> None:
        self.budget.gradient_calls = value

    def count_pass(self, rows: int, fed: int, context: int | None = None, backward: bool = False) -> None:
        """Count one forward pass (and its backward pass, then one gradient call per row) of ``rows`` sequences,
        ``fed`` positions computed in each, attending to ``context`` positions (default ``fed``: no cache)."""
        context = fed if context is None else context
        budget = self.budget
        budget.tokens += rows * fed
        budget.flops += self.cost.flops(rows * fed, context, backward)
        if backward:
            budget.gradient_calls += rows
            budget.gradient_tokens += rows * fed

    def _count_forward(self, rows: int, fed: int, context: int) -> None:
        self.count_pass(rows, fed, context)

    def nll(self, sequences: torch.Tensor | Sequence[Sequence[int]], n_scored: int) -> torch.Tensor:
        self.queries += len(sequences)
        return continuation_nll(self.model, sequences, n_scored, self.batch_tokens, self.pad_id,
                                on_pass=self._count_forward)

    def swap_nll(self, base: torch.Tensor, candidates: torch.Tensor, n_scored: int) -> torch.Tensor:
        """``nll(candidates, n_scored)`` for edits of ``base`` (``[T]``, or ``[N, T]``: one per candidate): the same
        scores and queries (one per candidate), computing only what follows each candidate's first edit where that
        saves time (see ``harness.scoring.swap_nll``). The keys and values of this base and of its best candidate
        are kept for the next call (a greedy search's next base is one of them)."""
        self.queries += len(candidates)
        return swap_nll(self.model, base, candidates, n_scored, self.batch_tokens, memo=self._prefixes,
                        on_pass=self._count_forward)

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

    def embeds_logits(self, embeds: torch.Tensor, keep: int, backward: bool = False) -> torch.Tensor:
        """Logits ``[B, keep, V]`` of the last ``keep`` positions of the model run on input embeddings ``embeds``
        ``[B, T, d]`` (continuous inputs: soft prompts, perturbed embeddings), and count the pass: with
        ``backward`` the caller back-propagates through them (a gradient call per row; call under
        ``torch.enable_grad()``), otherwise each row is one exact query."""
        kwarg = logits_tail_kwarg(self.model)
        logits = self.model(inputs_embeds=embeds, **({kwarg: keep} if kwarg else {})).logits[:, -keep:]
        rows, length = embeds.shape[0], embeds.shape[1]
        if not backward:
            self.queries += rows
        self.count_pass(rows, length, backward=backward)
        return logits

    def token_gradients(self, ids: torch.Tensor, n_scored: int, positions: Sequence[int],
                        loss: ContinuationLoss | None = None) -> torch.Tensor:
        """Gradient of the continuation loss w.r.t. the one-hot input at ``positions``, averaged over the rows.

        ``ids`` is ``[B, T]``; the loss of a row is its mean continuation NLL, or ``loss`` (see
        :data:`ContinuationLoss`) when given. Returns ``[len(positions), V]``
        (float32, CPU): entry ``[p, v]`` is the first-order change of the loss when token ``v`` is put at position
        ``positions[p]``, up to the same constant for every ``v`` (the gradient dotted with the current token's
        embedding; subtract ``grad[p, current]`` to get the estimated loss change of the swap).
        """
        self.count_pass(ids.shape[0], ids.shape[1], backward=True)
        emb_matrix = self.embeddings
        ids = ids.to(emb_matrix.device)
        embeds = emb_matrix[ids].detach().requires_grad_(True)
        kwarg = logits_tail_kwarg(self.model)  # only the positions that predict the continuation
        with torch.enable_grad():
            logits = self.model(inputs_embeds=embeds, **({kwarg: n_scored + 1} if kwarg else {})).logits
            logits = logits[:, -n_scored - 1:-1]
            labels = ids[:, -n_scored:]
            rows = (F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none").mean(1) if loss is None
                    else loss(logits.float(), labels))
            (grad,) = torch.autograd.grad(rows.mean(), embeds)
        pos = torch.as_tensor(list(positions), device=grad.device)
        # d loss / d onehot[p, v] = grad_embedding[p] . embedding[v]  (the HotFlip linearisation)
        emb_f32 = self._embeddings_f32 if self._embeddings_f32 is not None else emb_matrix.float()  # set with it
        return (grad[:, pos].sum(0).float() @ emb_f32.T).cpu()

    def continuation_scores(self, sequences: torch.Tensor, n_scored: int,
                            loss: ContinuationLoss | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per sequence of ``sequences`` (``[N, T]``): the continuation loss (mean NLL of the last ``n_scored``
        tokens, or ``loss``) and whether the model's greedy continuation is exactly those tokens (every position's
        argmax is the next token: what greedy decoding would emit), in plain batched forward passes (no prefix
        reuse). Returns float64 ``[N]`` and bool ``[N]`` on the CPU; one query per sequence."""
        self.queries += len(sequences)
        losses = torch.empty(len(sequences), dtype=torch.float64)
        matches = torch.empty(len(sequences), dtype=torch.bool)
        device = next(self.model.parameters()).device
        kwarg = logits_tail_kwarg(self.model)
        rows = max(1, self.batch_tokens // max(sequences.shape[1], 1))
        with torch.no_grad():
            for lo in range(0, len(sequences), rows):
                ids = sequences[lo:lo + rows].to(device)
                logits = self.model(input_ids=ids, **({kwarg: n_scored + 1} if kwarg else {})).logits
                self.count_pass(len(ids), ids.shape[1])
                logits = logits[:, -n_scored - 1:-1].float()
                labels = ids[:, -n_scored:]
                chunk = (F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1) if loss is None
                         else loss(logits, labels))
                losses[lo:lo + len(ids)] = chunk.double().cpu()
                matches[lo:lo + len(ids)] = (logits.argmax(-1) == labels).all(1).cpu()
        return losses, matches

    def forget(self) -> None:
        """Drop the keys and values ``swap_nll`` keeps between calls. A search that checkpoints calls this at each
        checkpoint, so that an uninterrupted run computes exactly what a resumed one (which starts with no cache)
        does, to the last bit: a cached prefix and a recomputed one may differ in float summation order."""
        self._prefixes.clear()


# -- records and summary metrics ---------------------------------------------------------------------------------------

def relative_increase(before: float, after: float) -> float:
    return (after - before) / before if before > 0 else 0.0


def log_ratio(before: float, after: float) -> float:
    """``log(after / before)``: the relative increase on a log scale (symmetric, and not driven by a damaged
    model's larger clean NLL the way ``(after - before) / before`` is through its denominator)."""
    return math.log(after / before) if before > 0 and after > 0 else 0.0


def example_record(example_id: str, before: float, after: float, threshold: float, **fields: Any) -> dict[str, Any]:
    """One per-example record with the fields every attack writes (and any attack-specific ``fields``): the NLLs,
    the relative increase (which the success ``threshold`` applies to), the absolute increase in nats and the
    log-ratio ``log(after / before)``."""
    if not (math.isfinite(before) and math.isfinite(after)):
        raise HarnessError(f"non-finite continuation NLL on example {example_id}; check the model's dtype/weights")
    rel = relative_increase(before, after)
    return {"id": example_id, "nll_before": before, "nll_after": after, "relative_increase": rel,
            "nll_increase": after - before, "log_ratio": log_ratio(before, after), "success": rel > threshold,
            **fields}


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
        # from the NLLs (the same numbers as the records' fields, also for records written before they existed)
        "mean_nll_increase": mean([r["nll_after"] - r["nll_before"] for r in records]),
        "mean_log_ratio": mean([log_ratio(r["nll_before"], r["nll_after"]) for r in records]),
        "n_examples": len(records),
        **budget_summary(records),
        "success_curve": success_curve(rel),
    }


def budget_summary(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The budget keys of :func:`summarize` (``mean_queries``, ``mean_gradient_calls``, ``mean_tokens``,
    ``mean_gradient_tokens``, ``mean_flops``), for a summary of other metrics (a targeted attack's, say).

    ``mean_queries`` counts a record without ``queries`` as 0 (as it always has); the others are NaN (unknown, never
    a cost of 0) when a record does not report them."""
    def mean(name: str) -> float:
        if not records or any(name not in r for r in records):
            return float("nan")
        return float(np.mean([r[name] for r in records]))

    queries = float(np.mean([r.get("queries", 0) for r in records])) if records else float("nan")
    return {"mean_queries": queries, **{f"mean_{name}": mean(name) for name in BUDGET_FIELDS[1:]}}


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
    # Absolute effects: a damaged model's larger clean NLL shrinks its relative increase; these do not divide by it.
    MetricSpec("mean_nll_increase", "NLL incr. (nats)", field="nll_increase", digits=3),
    MetricSpec("mean_log_ratio", "log(NLL after / before)", field="log_ratio", digits=3),
    MetricSpec("n_examples", "Examples", aggregation="none", digits=0, show=False),
    MetricSpec("mean_queries", "Queries / example", field="queries", digits=1, budget=True),
    MetricSpec("mean_gradient_calls", "Gradient passes / example", field="gradient_calls", digits=1, budget=True,
               show=False),
    MetricSpec("mean_tokens", "Tokens / example", field="tokens", digits=0, budget=True, show=False),
    MetricSpec("mean_gradient_tokens", "Backward tokens / example", field="gradient_tokens", digits=0, budget=True,
               show=False),
    MetricSpec("mean_flops", "FLOPs / example", field="flops", digits=0, budget=True, show=False),
    MetricSpec("success_curve", "Success curve", field="relative_increase", aggregation="none", kind="curve",
               show=False),
]

#: The edited positions (indices into the context) of a flip attack's records, histogrammed over records: where
#: the flips land (a boundary effect shows as a peak at the last positions). Flip attacks declare it too, and put
#: :func:`position_histogram` in their summary under its name.
POSITIONS_METRIC = MetricSpec("position_histogram", "Edited positions", field="positions", aggregation="none",
                              kind="histogram", show=False)


def position_histogram(records: Sequence[dict[str, Any]], n_positions: int) -> dict[str, list[int]]:
    """How often each context position ``0 .. n_positions - 1`` was edited, over the records' ``positions`` lists."""
    counts = [0] * n_positions
    for r in records:
        for p in r.get("positions") or ():
            if 0 <= p < n_positions:
                counts[p] += 1
    return {"positions": list(range(n_positions)), "counts": counts}


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
