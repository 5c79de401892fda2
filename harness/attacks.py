"""The public attack toolkit (``harness.attacks``): what every attack shares: the task, the vocabulary filter, gradients, exact scoring, records and summary metrics.

The task: a document's first ``context_tokens`` tokens are the context, the next ``continuation_tokens`` the
continuation; the attacker edits tokens it may touch (context tokens for HotFlip, a prepended trigger for UAT) to
raise the model's mean NLL of the continuation. An attack succeeds on an example when the relative NLL increase
``(after - before) / before`` exceeds ``threshold``; :func:`attack_summary` also stores the success rate at every
threshold of a grid, so a report can show the whole curve and no single threshold decides a comparison.

Fairness: documents, splits, budgets and random streams depend on the suite (seed, document id...), never on the
model, so every model of a suite faces the same examples and the same random draws (:func:`attack_rng`).

Budget: the :class:`Scorer` counts what it spends in a :class:`Budget` (queries, gradient passes, tokens computed,
FLOPs by :class:`ComputeCost`); the core's loop (:mod:`harness.loop`) resets it per example and writes
``budget.as_record()`` into the record, so every attack reports the same budget fields and the core averages them.
"""

from __future__ import annotations

import math
import string
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from .api import AttackPlugin, LoadedModel, MetricSpec
from .config import PluginConfig
from .context import StageContext, derive_seed
from .data import Document, DocumentSource, load_documents
from .env import native_bf16
from .errors import HarnessError
from .loop import run_examples
from .scoring import (auto_batch_tokens, continuation_nll, draft_model, logits_tail_kwarg, prefix_forward_kwargs,
                      swap_nll)
from .screening import ScreenConfig, probe_sample

#: A loss over the continuation: (logits ``[B, k, V]`` float32 of the positions that predict the last ``k`` tokens,
#: those tokens ``[B, k]``) -> one loss per row ``[B]``. The default (None) is the mean NLL of the ``k`` tokens.
ContinuationLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = [
    "ATTACK_METRICS", "BUDGET_FIELDS", "Budget", "CURVE_THRESHOLDS", "ComputeCost", "ContinuationLoss", "Example",
    "ExampleAttack", "ExamplesConfig", "PROGRESS_FIELD", "POSITIONS_METRIC", "ScreenConfig", "Scorer", "TaskConfig",
    "VocabFilter", "allowed_tokens", "attack_progress", "attack_rng", "attack_summary", "best_so_far",
    "continuation_nll", "disjoint_splits", "example_record", "held_out_examples", "log_ratio", "make_examples",
    "position_histogram", "random_allowed", "relative_increase", "seeded_order", "select_examples", "spearman",
    "success_curve", "swap_nll",
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

    #: Tokens before the continuation that the attack may edit (taken from each document).
    context_tokens: int = Field(default=32, ge=1)
    #: Tokens after the context whose NLL the attack raises (fixed; never edited).
    continuation_tokens: int = Field(default=32, ge=1)
    #: Put the end-of-text token first (as the perplexity metric does); never editable.
    prefix_eos: bool = True
    #: Which tokens the attack may insert.
    vocab: VocabFilter = VocabFilter()
    #: Relative NLL increase above which an example counts as a success. No core default: an attack plugin's
    #: config sets one (the built-in attacks share theirs), and a suite may override it.
    threshold: float = Field(ge=0)
    #: Tokens per forward pass when scoring candidates (batch size x length): the memory budget. ``auto``: the
    #: largest that fits the device's memory (CUDA) or the fastest (CPU), measured once per model.
    batch_tokens: int | Literal["auto"] = Field(default=16384)
    #: Probe sampling: a cheap draft ranks the candidates, the model scores the best few exactly (approximate choice,
    #: see ``harness.screening``); None: every candidate scored exactly.
    screen: ScreenConfig | None = None

    @property
    def planned_batch_tokens(self) -> int:
        """``batch_tokens`` for ``harness plan``: ``auto`` is measured on the device at run time; the plan assumes the
        default budget (16384) for it."""
        return self.batch_tokens if isinstance(self.batch_tokens, int) else 16384

    @field_validator("batch_tokens")
    @classmethod
    def _enough_tokens(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 64:
            raise ValueError(f"batch_tokens must be at least 64 (or `auto`), got {value}")
        return value


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
                    ctx: StageContext | None) -> list[Example]:
    """``n`` examples: the first ones, or the first ``n`` of one seeded order of the documents (the same sample for
    every model and every attack of the suite, so an attack and its control face the same documents).

    Samples nest: the seeded order ranks each document by a hash of (seed, document id) alone, never by ``n`` or by
    the pool, so ``n = 40`` contains ``n = 20`` (and a larger pool keeps the order of the documents it shares), and
    the sample comes back in that order (``n = 20``'s examples first). Records a previous run of this stage left
    for these examples (a config that differed only in the example count) are adopted here, in that order, so the
    attack computes only the examples it has no record of (:meth:`StageContext.adopt_records`)."""
    if n is not None and n >= len(examples) and sample == "first":
        n = None
    if n is None and sample == "first":
        chosen = examples
    elif sample == "first":
        chosen = examples[:n]
    else:
        if ctx is None:
            raise ValueError("a seeded sample needs the stage context (its seed)")
        chosen = seeded_order(examples, ctx.seed)[:n]
    if ctx is not None:  # outside a stage (a test, a script) there are no records to adopt
        ctx.adopt_records([ex.id for ex in chosen])
    return chosen


def seeded_order(examples: Sequence[Example], seed: int | None) -> list[Example]:
    """``examples`` in the seeded order every attack of a suite shares at ``seed`` (each document ranked by a hash of
    (seed, document id) alone): its first ``n`` are :func:`select_examples`'s seeded sample, so a universal attack's
    held-out split taken this way nests with the per-example attacks' documents."""
    rank = {ex.id: derive_seed(seed, "attacks", "documents", ex.id) for ex in examples}
    return sorted(examples, key=lambda ex: rank[ex.id])


def held_out_examples(model: LoadedModel, task: TaskConfig, source: DocumentSource, n: int | None, where: str,
                      seed: int | None = None) -> list[Example]:
    """A universal string's held-out examples from ``source``: the first ``n``, or with ``seed`` the first ``n`` in
    :func:`seeded_order` (they nest with the per-example attacks' seeded samples)."""
    if seed is None:
        return make_examples(load_documents(source), model, task, n, where=where)
    return seeded_order(make_examples(load_documents(source), model, task, where=where), seed)[:n]


def disjoint_splits(model: LoadedModel, task: TaskConfig, opt_source: DocumentSource, eval_source: DocumentSource,
                    n_opt: int | None, n_eval: int | None, where: str,
                    eval_seed: int | None = None) -> tuple[list[Example], list[Example]]:
    """A universal attack's optimisation and held-out examples (``n_opt`` and ``n_eval`` of them: the first ones, or
    with ``eval_seed`` the held-out split's first ``n_eval`` in :func:`seeded_order`), refusing splits that share an
    example: a string judged on documents it was optimised on would overstate its success."""
    opt = make_examples(load_documents(opt_source), model, task, n_opt, where=f"{where}.opt_data")
    held_out = held_out_examples(model, task, eval_source, n_eval, f"{where}.eval_data", eval_seed)
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
    """FLOPs per token of one model, by the standard estimate (Kaplan et al. 2020, "Scaling laws", table 1), plus the
    vocabulary projection where it runs.

    A token run forward costs ``2 N + 2 n_layer context d``: ``N`` is the count of **non-embedding** parameters (the
    input embeddings, position embeddings and the output projection to the vocabulary are left out, as Kaplan et al.
    do: a lookup costs nothing), ``context`` the positions the token's pass attends to, ``d`` the model width. The
    projection to the vocabulary costs ``2 d V`` (``head_params``) at each position whose logits are computed (the
    scorers project only the positions that predict a scored token). A token also run backward costs three times
    that (``6 N + 6 n_layer context d``, and ``6 d V`` per projected position).
    """

    non_embedding_params: int
    n_layer: int
    d_model: int
    head_params: int = 0

    @classmethod
    def of(cls, model: torch.nn.Module) -> ComputeCost:
        embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head_params = 0
        if isinstance(head, torch.nn.Module):
            embedding |= {id(p) for p in head.parameters()}
            weight = getattr(head, "weight", None)
            head_params = int(weight.numel()) if isinstance(weight, torch.Tensor) else 0
        config = getattr(model, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        return cls(non_embedding_params=sum(p.numel() for p in model.parameters() if id(p) not in embedding),
                   n_layer=int(getattr(text, "num_hidden_layers", 0) or 0),
                   d_model=int(getattr(text, "hidden_size", 0) or 0), head_params=head_params)

    def flops(self, tokens: int, context: int, backward: bool = False, projected: int = 0) -> float:
        """FLOPs of ``tokens`` positions, each attending to ``context`` positions, ``projected`` of them projected to
        the vocabulary (forward, or forward + backward)."""
        forward = (2.0 * self.non_embedding_params + 2.0 * self.n_layer * context * self.d_model) * tokens
        forward += 2.0 * self.head_params * projected
        return forward * (3.0 if backward else 1.0)


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
    #: Floating-point operations of all those passes (:class:`ComputeCost`), a screen's draft passes included.
    flops: float = 0.0
    #: Candidates a screen's draft scored (``TaskConfig.screen``); the model's exact scores are ``exact_queries``.
    screened: int = 0

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

        record: dict[str, Any] = {
            "queries": part(self.exact_queries + self.gradient_calls), "gradient_calls": part(self.gradient_calls),
            "tokens": part(self.tokens), "gradient_tokens": part(self.gradient_tokens), "flops": self.flops / share}
        if self.screened:  # only where a screen ran: records of exact searches keep their fields
            record["screened"] = part(self.screened)
        return record

    def state(self) -> dict[str, Any]:
        """JSON-able counters, to save with an attack's resumable state (``Budget(**state)`` restores them)."""
        return asdict(self)


#: The record fields :meth:`Budget.as_record` writes.
BUDGET_FIELDS = ("queries", "gradient_calls", "tokens", "gradient_tokens", "flops")


# -- the model: exact scores and first-order scores -------------------------------------------------------------------

#: Screens' drafts, per model and (blocks, dtype): built once, shared by every Scorer of the model.
_DRAFTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

class Scorer:
    """Exact continuation NLL of candidate sequences in batched forward passes; counts what it spends in ``budget``.

    ``queries`` and ``gradient_calls`` read and write ``budget.exact_queries`` and ``budget.gradient_calls``. A pass an
    attack runs itself (on embeddings, say) is counted with :meth:`count_pass`.
    """

    def __init__(self, model: LoadedModel, batch_tokens: int | str, screen: ScreenConfig | None = None) -> None:
        self.model = model.model
        self.batch_tokens = auto_batch_tokens(self.model) if batch_tokens == "auto" else int(batch_tokens)
        pad = model.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else 0
        self.budget = Budget()
        self.cost = ComputeCost.of(self.model)
        self._embeddings: torch.Tensor | None = None
        self._embeddings_f32: torch.Tensor | None = None
        self._prefixes: dict = {}  # swap_nll's cached keys and values of the last base and its best candidate
        self._grad_prefix: dict = {}  # token_gradients' cached keys and values of the unedited prefix
        #: ``screen``: probe sampling for the calls that ask for a best candidate (``select=``); its draft is built
        #: once per model and configuration; ``screen_stats`` accumulates what it did (see ``probe_sample``).
        self.screen = screen
        self.screen_stats: dict[str, float] = {}
        self._draft: torch.nn.Module | None = None
        self._draft_cost: ComputeCost | None = None
        self._draft_prefixes: dict = {}

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

    def count_pass(self, rows: int, fed: int, context: int | None = None, backward: bool = False,
                   projected: int | None = None) -> None:
        """Count one forward pass (and its backward pass, then one gradient call per row) of ``rows`` sequences,
        ``fed`` positions computed in each, attending to ``context`` positions (default ``fed``: no cache),
        ``projected`` of them projected to the vocabulary (default ``fed``)."""
        context = fed if context is None else context
        projected = fed if projected is None else projected
        budget = self.budget
        budget.tokens += rows * fed
        budget.flops += self.cost.flops(rows * fed, context, backward, rows * projected)
        if backward:
            budget.gradient_calls += rows
            budget.gradient_tokens += rows * fed

    def _count_forward(self, rows: int, fed: int, context: int, projected: int) -> None:
        self.count_pass(rows, fed, context, projected=projected)

    def _count_draft(self, rows: int, fed: int, context: int, projected: int) -> None:
        assert self._draft_cost is not None
        self.budget.flops += self._draft_cost.flops(rows * fed, context, projected=rows * projected)

    def screen_record(self) -> dict[str, Any]:
        """What the screen did, as record fields (none without a screen): the share of candidates scored exactly,
        the mean probe agreement (where a probe ran), and with ``audit`` how often (and by how much, in mean score)
        its choice missed the exact best over all candidates."""
        stats = self.screen_stats
        if self.screen is None or not stats.get("calls"):
            return {}
        record = {"screen_exact_fraction": stats["exact"] / stats["candidates"], "screen_choices": int(stats["calls"])}
        if stats.get("probes"):  # a rescore without a probe measures no agreement
            record["screen_agreement"] = stats["agreement"] / stats["probes"]
        if self.screen.audit:
            record.update(screen_misses=int(stats.get("misses", 0)),
                          screen_regret=stats.get("regret", 0.0) / stats["calls"])
        return record

    def draft(self) -> torch.nn.Module:
        """The screen's draft of the model (built once per model and screen configuration, then shared)."""
        assert self.screen is not None
        if self._draft is None:
            n_layers = ComputeCost.of(self.model).n_layer
            layers = self.screen.layer_indices(n_layers)
            key = (tuple(layers) if layers is not None else None, self.screen.dtype)
            drafts = _DRAFTS.setdefault(self.model, {})
            if key not in drafts:
                device = next(self.model.parameters()).device
                if self.screen.dtype == "bfloat16" and not native_bf16(device):
                    where = f" ({torch.backends.cpu.get_cpu_capability()})" if device.type == "cpu" else ""
                    raise HarnessError(f"screen.dtype: bfloat16 on a {device.type} without native bf16{where}: the "
                                       "draft would run emulated, slower than the exact scores it saves; fix: "
                                       "`dtype: float32` in the attack's `screen:`")
                dtype = getattr(torch, self.screen.dtype)
                drafts[key] = draft_model(self.model, layers if layers is not None else range(n_layers), dtype)
            self._draft = drafts[key]
            self._draft_cost = ComputeCost.of(self._draft)
        return self._draft

    def nll(self, sequences: torch.Tensor | Sequence[Sequence[int]], n_scored: int,
            select: Literal["min", "max"] | None = None, group: int = 1) -> torch.Tensor:
        """Mean continuation NLL of each sequence. ``select`` says the caller keeps the candidate with the least
        (``min``) or greatest (``max``) score, a candidate being ``group`` consecutive rows (their mean): with a
        ``screen`` only some candidates are scored exactly, the others get the worst value (see
        :func:`harness.screening.probe_sample`); without one every row is scored exactly either way."""
        if select is not None and self.screen is not None and len(sequences) > group:
            def score(rows: torch.Tensor, draft: bool) -> torch.Tensor:
                subset = (sequences[rows] if isinstance(sequences, torch.Tensor)
                          else [sequences[int(i)] for i in rows])
                if draft:
                    self.budget.screened += len(rows)
                    return continuation_nll(self.draft(), subset, n_scored, self.batch_tokens, self.pad_id,
                                            on_pass=self._count_draft)
                return self.nll(subset, n_scored)
            return probe_sample(score, len(sequences) // group, group, select, self.screen, self.screen_stats)
        self.queries += len(sequences)
        return continuation_nll(self.model, sequences, n_scored, self.batch_tokens, self.pad_id,
                                on_pass=self._count_forward)

    def swap_nll(self, base: torch.Tensor, candidates: torch.Tensor, n_scored: int,
                 select: Literal["min", "max"] | None = None, group: int = 1,
                 matches: torch.Tensor | None = None) -> torch.Tensor:
        """``nll(candidates, n_scored)`` for edits of ``base`` (``[T]``, or ``[N, T]``: one per candidate): the same
        scores and queries (one per candidate), computing only what follows each candidate's first edit where that
        saves time (see ``harness.scoring.swap_nll``). The keys and values of this base and of its best candidate
        are kept for the next call (a greedy search's next base is one of them). ``select`` and ``group``: as for
        :meth:`nll` (the screen's draft reuses its own prefixes the same way). ``matches`` (a bool ``[N]`` tensor,
        when given) receives, for every candidate scored exactly, whether its continuation is the model's greedy one
        (from the same pass; a screened-out candidate gets False)."""
        # The prefix memo keeps the candidate the search will keep: the lowest score for a minimising search.
        keep: Literal["max", "min"] = "min" if select == "min" else "max"
        if select is not None and self.screen is not None and len(candidates) > group:
            def score(rows: torch.Tensor, draft: bool) -> torch.Tensor:
                own = base if base.dim() == 1 else base[rows]
                if draft:
                    self.budget.screened += len(rows)
                    return swap_nll(self.draft(), own, candidates[rows], n_scored, self.batch_tokens,
                                    memo=self._draft_prefixes, on_pass=self._count_draft, keep=keep)
                self.queries += len(rows)
                greedy = None if matches is None else torch.zeros(len(rows), dtype=torch.bool)
                exact = swap_nll(self.model, own, candidates[rows], n_scored, self.batch_tokens, memo=self._prefixes,
                                 on_pass=self._count_forward, keep=keep, matches=greedy)
                if matches is not None and greedy is not None:
                    matches[rows] = greedy
                return exact
            if matches is not None:
                matches.zero_()
            return probe_sample(score, len(candidates) // group, group, select, self.screen, self.screen_stats)
        self.queries += len(candidates)
        return swap_nll(self.model, base, candidates, n_scored, self.batch_tokens, memo=self._prefixes,
                        on_pass=self._count_forward, keep=keep, matches=matches)

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
        self.count_pass(rows, length, backward=backward, projected=keep if kwarg else length)
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
        kwarg = logits_tail_kwarg(self.model)  # only the positions that predict the continuation
        emb_matrix = self.embeddings
        ids = ids.to(emb_matrix.device)
        # Positions before the first edited one are the same at every step (a prompt before a suffix): their keys and
        # values come from a cache (exact: no earlier position attends to a later one), so the pass runs forward and
        # backward on the rest only.
        start = min(positions, default=0)
        forward, cached = prefix_forward_kwargs(self.model, ids, start, self._grad_prefix, self._count_forward)
        offset = start if cached else 0  # the first position fed
        fed = ids.shape[1] - offset
        self.count_pass(ids.shape[0], fed, ids.shape[1], backward=True, projected=n_scored + 1 if kwarg else fed)
        embeds = emb_matrix[ids[:, offset:]].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(inputs_embeds=embeds, **forward, **({kwarg: n_scored + 1} if kwarg else {})).logits
            logits = logits[:, -n_scored - 1:-1]
            labels = ids[:, -n_scored:]
            rows = (F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none").mean(1) if loss is None
                    else loss(logits.float(), labels))
            (grad,) = torch.autograd.grad(rows.mean(), embeds)
        pos = torch.as_tensor(list(positions), device=grad.device) - offset
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
                self.count_pass(len(ids), ids.shape[1], projected=logits.shape[1])
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
        self._draft_prefixes.clear()
        self._grad_prefix.clear()


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


#: The record field of an attack's progress: the best continuation NLL reached after each step (index 0: the unedited
#: example's), steps of equal cost. The report's gradient-masking check reads from it the success rate against the
#: steps spent (it must rise with the budget).
PROGRESS_FIELD = "nll_by_step"


def best_so_far(before: float, nlls: Sequence[float]) -> list[float]:
    """``[before, max(before, nlls[0]), ...]``: the best NLL reached after each step, for :data:`PROGRESS_FIELD`."""
    out = [float(before)]
    for nll in nlls:
        out.append(max(out[-1], float(nll)))
    return out


def success_curve(increases: Sequence[float], thresholds: Sequence[float] = CURVE_THRESHOLDS) -> dict[str, list]:
    rel = np.asarray(increases, dtype=float)
    return {"thresholds": list(thresholds), "success_rate": [float((rel > t).mean()) if len(rel) else 0.0
                                                              for t in thresholds]}


def attack_summary(records: Sequence[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """What an attack's summary holds beside the metrics the core computes from its records (:data:`ATTACK_METRICS`
    with a ``field``: success rate, NLL increases, budget means): the threshold, the number of examples and the
    success curve."""
    return {"threshold": threshold, "n_examples": len(records),
            "success_curve": success_curve([r["relative_increase"] for r in records])}


def attack_progress(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Progress-bar fields of an attack's records so far (:func:`harness.loop.run_examples`'s ``show``)."""
    return {"success": float(np.mean([bool(r.get("success")) for r in records])) if records else 0.0,
            "queries": int(sum(r.get("queries", 0) for r in records))}


#: What every attack reports, declared (an attack's ``declared_metrics`` returns these plus its own): the core computes
#: those with a ``field`` from the records, :func:`attack_summary` gives the rest. Success and NLL increase read as
#: the attacker's numbers: higher means the attack did better (the model is less robust).
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


# -- an attack written as its per-example function ---------------------------------------------------------------------

class ExamplesConfig(TaskConfig):
    """The shared task on documents attacked one by one: ``data``, how many (``n_examples``: the first usable
    documents, or a seeded sample, the same for every model and attack of the suite)."""

    data: DocumentSource
    n_examples: int | None = Field(default=None, ge=1)
    sample: Literal["first", "seeded"] = "first"


ExamplesConfigT = TypeVar("ExamplesConfigT", bound=ExamplesConfig)


class ExampleAttack(AttackPlugin[ExamplesConfigT]):
    """An attack that is its per-example function: the core makes the examples, runs the loop
    (:func:`harness.loop.run_examples`: resume, stop, the budget per example, progress, records) and the summary
    (:data:`ATTACK_METRICS`). Implement :meth:`attack_example`; :meth:`setup` for what every example shares."""

    def declared_metrics(self) -> list[MetricSpec]:
        return ATTACK_METRICS

    def setup(self, model: LoadedModel, ctx: StageContext) -> None:
        """Optional: prepare what every example shares (allowed tokens, say), before the first example."""

    def attack_example(self, example: Example, scorer: Scorer, rng: torch.Generator) -> dict[str, Any]:
        """Attack one example, scoring with ``scorer`` (its budget is this example's), drawing from ``rng`` (keyed by
        the seed, the plugin's name and the example: the same for every model); its :func:`example_record`."""
        raise NotImplementedError

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        examples = make_examples(load_documents(cfg.data), model, cfg, where=f"attacks.{ctx.stage.entry}.data")
        examples = select_examples(examples, cfg.n_examples, cfg.sample, ctx)
        scorer = Scorer(model, cfg.batch_tokens, cfg.screen)
        self.setup(model, ctx)

        def one(example: Example) -> dict[str, Any]:
            scorer.screen_stats.clear()  # the screen's record fields are per example, as the budget is
            return {**self.attack_example(example, scorer, attack_rng(ctx, self.name, example.id)),
                    **scorer.screen_record()}

        records = run_examples(ctx, examples, one, scorer=scorer, show=attack_progress)
        return attack_summary(records, cfg.threshold)
