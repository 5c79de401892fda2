"""Attack plugin ``gcg``: Greedy Coordinate Gradient (Zou et al. 2023), the loop of nanoGCG 0.3.0 on the suite's task.

An optimised string of tokens (the document's own context tokens with ``edit: context``, HotFlip's threat model; or
``n_tokens`` tokens placed after/before the context with ``edit: suffix | prefix``, the nanoGCG/HarmBench setting)
is searched to minimise a loss over the tokens that follow it:

- ``objective: untargeted``: minus the continuation NLL (raise it: the suite's shared task, threshold and summary);
- ``objective: targeted``: the NLL of a target (``target:`` text, or ``target_field:`` of each document) put where
  the continuation was; success is exact match of the model's greedy continuation with the target.

Each step (:func:`gcg_step`):

1. one forward + backward pass gives the gradient of the loss w.r.t. the one-hot of the string's tokens (averaged
   over the documents of the step with ``universal: true``);
2. per position the ``topk`` tokens with the most negative gradient (tokens the vocabulary filter forbids never);
3. ``search_width`` candidates, each the current string with ``n_replace`` random positions set to random tokens of
   their top-k; candidates whose decoded text does not re-encode to the same ids are dropped (``filter_ids``);
4. every candidate is scored exactly in batched forward passes (tokens before its first edit reuse cached keys and
   values where that saves time); the best enters a buffer of the ``buffer_size`` best strings (0: the best
   candidate replaces the current string, even when worse, as in nanoGCG), whose best is the next current string.

``early_stop`` ends the search at the first exact match (targeted) or success (untargeted). ``use_mellowmax``
replaces the targeted loss by mellowmax of the target tokens' negative logits (as nanoGCG). ``universal: true``
optimises one string over an optimisation split (``batch_size`` documents per step, in a seeded order, as UAT; with
``target_field`` each document keeps its own target, as GCG-multi) and judges it on a disjoint held-out split;
its string feeds ``uat_transfer`` like a UAT trigger. Its random control (``control_of: <this entry>``) runs the same
loop, the same positions, the same candidate count, with uniform allowed tokens instead of the gradient's top-k (and
no gradient pass). ``max_queries`` caps each example's exact evaluations plus gradient
passes (the control is charged the gradient passes it skips, so both score the same number of candidates): "GCG at
HotFlip's budget" is a config.

The state of a search (current string, buffer, best string, step, counters, the generator's state) is saved
atomically every ``save_every`` steps; an interrupted stage (SIGUSR1, kill -9) resumes from the last save and ends
with the same numbers as an uninterrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from harness import (RECORD_BYTES, AttackPlugin, Batch, DocumentSource, HarnessError, LoadedModel, MetricSpec,
                     PlanInputs, StageContext, StagePreempted, Workload, hookimpl, load_documents, planned_examples)
from harness.attacks import (ATTACK_METRICS, POSITIONS_METRIC, PROGRESS_FIELD, Budget, ContinuationLoss, Example,
                             Scorer, TaskConfig, allowed_tokens, attack_progress, attack_rng, attack_summary,
                             best_so_far, disjoint_splits, example_record, make_examples, position_histogram,
                             random_allowed, select_examples)
from harness.loop import run_chunks, run_examples
from harness.triggers import evaluate_trigger, optimisation_budget, tokenizer_fingerprint

from . import SUCCESS_THRESHOLD

Edit = Literal["context", "suffix", "prefix"]


class GCGConfig(TaskConfig):
    limit_fields = ("n_examples", "n_opt", "n_eval")  # `harness run --limit N` caps these
    #: Success: the continuation NLL raised by more than this fraction (the built-in attacks' shared choice).
    threshold: float = Field(default=SUCCESS_THRESHOLD, ge=0)
    #: Documents attacked one by one (``universal: false``).
    data: DocumentSource | None = None
    #: How many documents of ``data`` (None: all usable ones); nested: a larger value keeps the first ones' records.
    n_examples: int | None = Field(default=None, ge=1)
    #: Which ``n_examples``: the first usable documents, or a sample seeded by the suite's seed.
    sample: Literal["first", "seeded"] = "first"
    #: One string for all documents: optimised on ``opt_data``, judged on the disjoint ``eval_data`` (as UAT).
    universal: bool = False
    #: Universal: the documents the string is optimised on.
    opt_data: DocumentSource | None = None
    #: Universal: the held-out documents it is judged on (none may be in ``opt_data``).
    eval_data: DocumentSource | None = None
    #: Universal: how many ``opt_data`` documents (None: all usable ones).
    n_opt: int | None = Field(default=None, ge=1)
    #: Universal: how many ``eval_data`` documents (None: all usable ones).
    n_eval: int | None = Field(default=None, ge=1)
    #: Universal: optimisation documents per step (the gradient and every candidate's loss average over them).
    batch_size: int = Field(default=16, ge=1)

    #: What the attacker edits: the context tokens, or an optimised string of ``n_tokens`` after/before them.
    edit: Edit = "context"
    #: Length of the optimised string (``edit: suffix`` or ``prefix``; ``context`` edits ``context_tokens``).
    n_tokens: int = Field(default=20, ge=1)
    #: The optimised string's first value (suffix/prefix; default nanoGCG's "x x ... x", one "x" per token).
    optim_str_init: str | None = None
    #: Untargeted: raise the continuation's NLL; targeted: lower a target text's NLL (nanoGCG's objective).
    objective: Literal["untargeted", "targeted"] = "untargeted"
    #: Targeted: one fixed target text, or the name of a field of each document holding its target.
    target: str | None = None
    #: Targeted: the field of each document holding its target text (instead of one ``target``).
    target_field: str | None = None

    # nanoGCG 0.3.0's options, with its defaults.
    #: Optimisation steps (one gradient pass and one batch of candidates each).
    num_steps: int = Field(default=250, ge=1)
    #: Candidate strings sampled per step, each scored (nanoGCG's ``search_width``).
    search_width: int = Field(default=512, ge=1)
    #: Each position's replacements are drawn from the ``topk`` tokens with the most negative gradient.
    topk: int = Field(default=256, ge=1)
    #: Positions replaced per candidate.
    n_replace: int = Field(default=1, ge=1)
    #: Best strings kept between steps (nanoGCG's attack buffer; 0 keeps only the best).
    buffer_size: int = Field(default=0, ge=0)
    #: Targeted: mellowmax of the target logits instead of cross-entropy (nanoGCG's option).
    use_mellowmax: bool = False
    #: The mellowmax temperature.
    mellowmax_alpha: float = Field(default=1.0, gt=0)
    #: End a search at its first exact match (targeted; per-example searches) or success (untargeted).
    early_stop: bool = False
    #: Drop candidates whose text does not re-tokenise to the same tokens (nanoGCG's ``filter_ids``).
    filter_ids: bool = True

    #: Per example (universal: for the optimisation): exact evaluations + gradient passes at most; None: no cap.
    max_queries: int | None = Field(default=None, ge=1)
    #: Steps between two saved states (the most work an interruption loses).
    save_every: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> GCGConfig:
        if self.universal:
            if self.opt_data is None or self.eval_data is None or self.data is not None:
                raise ValueError("universal: true needs `opt_data:` and `eval_data:` (disjoint splits) and no `data:`")
            if self.edit == "context":
                raise ValueError("universal: true needs `edit: suffix` or `edit: prefix` (one string for every "
                                 "document; `context` edits each document's own tokens)")
        elif self.data is None or self.opt_data is not None or self.eval_data is not None:
            raise ValueError("give `data:` (the documents attacked), or set `universal: true` with `opt_data:` and "
                             "`eval_data:`")
        if self.objective == "targeted":
            if (self.target is None) == (self.target_field is None):
                raise ValueError("objective: targeted needs exactly one of `target: <text>` or `target_field: <name>`")
            if self.target is not None and not self.target:
                raise ValueError("`target:` is empty; fix: give the text the model should be made to emit")
        else:
            if self.target is not None or self.target_field is not None:
                raise ValueError("`target:`/`target_field:` need `objective: targeted`")
            if self.use_mellowmax:
                raise ValueError("use_mellowmax applies to `objective: targeted` (a loss over target logits)")
        length = self.context_tokens if self.edit == "context" else self.n_tokens
        if self.n_replace > length:
            raise ValueError(f"n_replace = {self.n_replace} exceeds the {length} editable tokens")
        return self


# -- the optimisation problem ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    """What one search sees: documents (one, or a universal string's optimisation split), the tokens scored after
    the string (continuation or target) per document, and where the string sits."""

    examples: list[Example]
    tails: list[tuple[int, ...]]
    edit: Edit
    objective: str

    def ids(self, i: int, string: Sequence[int] | None) -> list[int]:
        """Document ``i`` with ``string`` in place (None: without the attack)."""
        ex, tail = self.examples[i], self.tails[i]
        if self.edit == "context":
            return [*ex.prefix, *(ex.context if string is None else string), *tail]
        string = list(string or [])
        if self.edit == "prefix":
            return [*ex.prefix, *string, *ex.context, *tail]
        return [*ex.prefix, *ex.context, *string, *tail]

    def positions(self, length: int) -> list[int]:
        ex = self.examples[0]
        start = len(ex.prefix) + (len(ex.context) if self.edit == "suffix" else 0)
        return list(range(start, start + length))


def mellowmax_loss(alpha: float) -> ContinuationLoss:
    """nanoGCG's mellowmax of the target tokens' negative logits: a smooth maximum over the target positions."""

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        t = -logits.gather(2, labels[..., None])[..., 0]
        return (torch.logsumexp(alpha * t, dim=1) - math.log(t.shape[1])) / alpha

    return loss


class Objective:
    """The loss minimised (and its gradient) over a set of documents, counting every query in ``scorer``.

    Documents whose tails (targets) differ in length are scored in one batch per length (GCG-multi's per-document
    targets); a batch's loss is the mean over its documents either way."""

    def __init__(self, scorer: Scorer, problem: Problem, cfg: GCGConfig) -> None:
        self.scorer, self.problem = scorer, problem
        self.sign = -1.0 if problem.objective == "untargeted" else 1.0  # untargeted: raise the NLL
        self.custom = mellowmax_loss(cfg.mellowmax_alpha) if cfg.use_mellowmax else None
        #: Whether greedy decoding emits the tail, per string the last ``losses`` call scored exactly on one
        #: document (read from the same logits): the search's exact-match check of its kept string needs no pass.
        self.greedy: dict[tuple[int, ...], bool] = {}

    def by_length(self, docs: Sequence[int]) -> list[tuple[int, list[int]]]:
        """``docs`` grouped by the length of their tail: (tail length, documents), in order of first appearance."""
        groups: dict[int, list[int]] = {}
        for i in docs:
            groups.setdefault(len(self.problem.tails[i]), []).append(i)
        return list(groups.items())

    def batch(self, docs: Sequence[int], strings: Sequence[Sequence[int]]) -> torch.Tensor:
        """Every string in every document (string-major); the documents' tails must have one length."""
        return torch.tensor([self.problem.ids(i, s) for s in strings for i in docs])

    def gradient(self, docs: Sequence[int], string: Sequence[int]) -> torch.Tensor:
        """``[len(string), V]``: d loss / d one-hot of the string's tokens, averaged over ``docs``."""
        positions = self.problem.positions(len(string))
        grads = [(len(group), self.scorer.token_gradients(self.batch(group, [string]), k, positions, loss=self.custom))
                 for k, group in self.by_length(docs)]
        if len(grads) == 1:  # one batch: its mean already (not re-weighted, which would round differently)
            return self.sign * grads[0][1]
        return self.sign * sum(n * grad for n, grad in grads) / len(docs)

    def losses(self, docs: Sequence[int], current: Sequence[int], candidates: torch.Tensor) -> torch.Tensor:
        """Exact loss of every candidate string (mean over ``docs``); edits of ``current`` reuse its prefix. With a
        ``screen`` only the candidates the screen picked are scored exactly; the others get +inf (never kept)."""
        per_group = []
        groups = self.by_length(docs)
        matches = torch.zeros(len(candidates), dtype=torch.bool) if len(docs) == 1 else None
        # A screen (``screen:``) ranks the candidates on their loss over every document at once: one tail length only.
        select = ("max" if self.sign < 0 else "min") if len(groups) == 1 and len(candidates) > 1 else None
        for k, group in groups:
            seqs = self.batch(group, candidates.tolist())
            if self.custom is not None:
                nll, greedy = self.scorer.continuation_scores(seqs, k, loss=self.custom)
                if matches is not None:
                    matches[:] = greedy
            else:
                base = self.batch(group, [current])
                base = base[0] if len(group) == 1 else base.repeat(len(candidates), 1)
                nll = self.scorer.swap_nll(base, seqs, k, select=select, group=len(group), matches=matches)
            per_group.append(nll.view(len(candidates), len(group)))
        losses = self.sign * torch.cat(per_group, dim=1).mean(1)
        if matches is not None:
            scored = torch.isfinite(losses)  # a screen's unscored candidates are not known
            self.greedy = {tuple(c): bool(m) for c, m, f in zip(candidates.tolist(), matches, scored) if f}
        return losses

    def scores(self, docs: Sequence[int], string: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per document of ``docs`` (in order): the NLL of its tail with ``string`` in place (None: without the
        attack) and whether greedy decoding emits exactly that tail."""
        nll = torch.empty(len(docs), dtype=torch.float64)
        match = torch.empty(len(docs), dtype=torch.bool)
        where = {doc: n for n, doc in enumerate(docs)}
        for k, group in self.by_length(docs):
            ids = torch.tensor([self.problem.ids(i, string) for i in group])
            g_nll, g_match = self.scorer.continuation_scores(ids, k)
            rows = torch.tensor([where[i] for i in group])
            nll[rows], match[rows] = g_nll, g_match
        return nll, match

    def exact_match(self, docs: Sequence[int], string: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per document: target NLL with ``string`` and whether greedy decoding emits exactly the target."""
        return self.scores(docs, string)

    def is_match(self, docs: Sequence[int], string: Sequence[int]) -> bool:
        """Whether greedy decoding emits exactly every document's target with ``string``: known from the last
        ``losses`` call where it scored ``string`` exactly (one document), else one query."""
        known = self.greedy.get(tuple(string)) if len(docs) == 1 else None
        return known if known is not None else bool(self.exact_match(docs, string)[1].all())


# -- the search ----------------------------------------------------------------------------------------------------

@dataclass
class SearchState:
    """Everything a search needs to continue (saved every few steps; JSON: floats round-trip exactly)."""

    key: str
    step: int
    current: list[int]
    buffer: list[tuple[float, list[int]]]  # (loss, string), best first; nanoGCG's AttackBuffer
    best: tuple[float, list[int]]  # the lowest loss seen (targeted: the best exact match first)
    best_match: bool
    generator: list[int]
    #: What the search spent so far (``Budget.state()``: exact queries, gradient passes, tokens, FLOPs).
    budget: dict[str, Any] = field(default_factory=dict)
    charged: int = 0  # queries counted against max_queries (the control is charged its skipped gradients too)
    dropped: int = 0  # candidates dropped by filter_ids
    steps_to_success: int | None = None
    losses: list[float] = field(default_factory=list)  # the best candidate's loss at every step

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "buffer": [[l, s] for l, s in self.buffer], "best": list(self.best)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchState:
        data = dict(data)
        data["buffer"] = [(float(l), list(s)) for l, s in data["buffer"]]
        data["best"] = (float(data["best"][0]), list(data["best"][1]))
        return cls(**data)


def sample_candidates(current: torch.Tensor, grad: torch.Tensor | None, allowed: torch.Tensor, cfg: GCGConfig,
                      gen: torch.Generator) -> torch.Tensor:
    """``search_width`` strings, each ``current`` with ``n_replace`` positions changed (nanoGCG's
    ``sample_ids_from_grad``): to one of the position's top-k tokens by gradient, or (``grad`` None: the control)
    to a uniform allowed token. Both draw the positions the same way, so at a seed they edit the same positions."""
    n = len(current)
    positions = torch.argsort(torch.rand((cfg.search_width, n), generator=gen), dim=1)[:, :cfg.n_replace]
    if grad is None:
        values = random_allowed(allowed, cfg.search_width * cfg.n_replace, gen).view(cfg.search_width, cfg.n_replace)
    else:
        grad = grad.clone()
        grad[:, ~allowed] = torch.inf
        topk = min(cfg.topk, int(allowed.sum()))
        top = (-grad).topk(topk, dim=1).indices  # [n, topk]
        pick = torch.randint(0, topk, (cfg.search_width, cfg.n_replace, 1), generator=gen)
        values = torch.gather(top[positions], 2, pick).squeeze(2)
    return current.repeat(cfg.search_width, 1).scatter_(1, positions, values)


def retokenizes(tokenizer: Any, candidates: torch.Tensor) -> torch.Tensor:
    """nanoGCG's ``filter_ids``: whether each candidate's decoded text encodes back to the same ids."""
    texts = tokenizer.batch_decode(candidates.tolist())
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids == row for ids, row in zip(encoded, candidates.tolist())], dtype=torch.bool)


def buffer_add(buffer: list[tuple[float, list[int]]], size: int, loss: float, string: list[int]) -> None:
    """nanoGCG's AttackBuffer.add: size 0 keeps only the newest; otherwise the worst entry is replaced."""
    if size == 0:
        buffer[:] = [(loss, string)]
    elif len(buffer) < size:
        buffer.append((loss, string))
        buffer.sort(key=lambda b: b[0])
    elif loss < buffer[-1][0]:
        buffer[-1] = (loss, string)
        buffer.sort(key=lambda b: b[0])


def search(objective: Objective, init: list[int], allowed: torch.Tensor, tokenizer: Any, cfg: GCGConfig,
           gen: torch.Generator, key: str, batches: Sequence[Sequence[int]], ctx: StageContext | None = None,
           untargeted_before: float | None = None, threshold: float = 0.0,
           init_loss: float | None = None, control: bool = False) -> SearchState:
    """The GCG loop (or, ``control``, its random control) from ``init``, over the document batch of each step
    (``batches[step % len(batches)]``); resumes from ``ctx``'s saved state for ``key`` and saves every ``save_every``
    steps: a search that checkpoints inside one example (the core's loop's lower-level door: it raises
    StagePreempted itself, after its state is saved). ``init_loss``: the loss of ``init`` where the caller has scored
    it already (not scored again)."""
    scorer = objective.scorer
    targeted = objective.problem.objective == "targeted"
    saved = ctx.load_state("gcg") if ctx is not None else None
    if saved is not None and saved["key"] == key:
        state = SearchState.from_json(saved)
        gen.set_state(torch.tensor(state.generator, dtype=torch.uint8))
    else:
        state = initial_state(objective, init, allowed, cfg, gen, key, batches[0], targeted, init_loss)
    if state.budget:  # resumed: what the search had spent when it was saved (the caller's scoring included)
        scorer.budget = Budget(**state.budget)
    budget = cfg.max_queries if cfg.max_queries is not None else math.inf
    while state.step < cfg.num_steps:
        if ctx is not None and ctx.should_stop:  # resume from the last saved state (an exact restart point)
            raise StagePreempted(ctx.stage.id)
        if cfg.early_stop and (state.best_match if targeted else
                               untargeted_before is not None and -state.best[0] > untargeted_before * (1 + threshold)):
            break
        docs = batches[state.step % len(batches)]
        check = len(docs) if targeted and not cfg.universal else 0  # the exact-match check after the step
        width = cfg.search_width
        if budget < math.inf:  # what the budget leaves after this step's gradient pass and check
            width = min(width, int(budget - state.charged - len(docs) - check) // len(docs))
        if width < 1:
            break
        current = torch.tensor(state.current)
        grad = None if control else objective.gradient(docs, state.current)
        state.charged += len(docs)  # the gradient pass (the control is charged it too: equal exact evaluations)
        candidates = sample_candidates(current, grad, allowed, cfg, gen)
        if cfg.filter_ids:
            keep = retokenizes(tokenizer, candidates)
            state.dropped += int((~keep).sum())
            candidates = candidates[keep]
        candidates = candidates[:width]
        if len(candidates):
            losses = objective.losses(docs, state.current, candidates)
            state.charged += len(candidates) * len(docs)
            best = int(losses.argmin())
            loss = float(losses[best])
            state.losses.append(loss)
            if cfg.buffer_size == 0 or loss < state.buffer[-1][0]:
                buffer_add(state.buffer, cfg.buffer_size, loss, candidates[best].tolist())
            state.current = list(state.buffer[0][1])
            current_loss = state.buffer[0][0]
            match = False
            if check:  # is the current string an exact match? (charged one query; often read from its scoring)
                state.charged += check
                match = objective.is_match(docs, state.current)
                if match and state.steps_to_success is None:
                    state.steps_to_success = state.step + 1
            if (match, -current_loss) > (state.best_match, -state.best[0]):
                state.best, state.best_match = (current_loss, list(state.current)), match
        state.step += 1
        state.budget = scorer.budget.state()
        if ctx is not None and state.step % cfg.save_every == 0 and state.step < cfg.num_steps:
            state.generator = gen.get_state().tolist()
            ctx.save_state("gcg", state.to_json())
            scorer.forget()  # what follows computes exactly as a run resumed from here does
    state.budget = scorer.budget.state()
    return state


def initial_state(objective: Objective, init: list[int], allowed: torch.Tensor, cfg: GCGConfig, gen: torch.Generator,
                  key: str, docs: Sequence[int], targeted: bool, init_loss: float | None) -> SearchState:
    """The buffer's first strings (``init``, then random allowed strings, as nanoGCG's random init), scored."""
    strings = [init] + [random_allowed(allowed, len(init), gen).tolist() for _ in range(max(0, cfg.buffer_size - 1))]
    if init_loss is None:
        losses = objective.losses(docs, init, torch.tensor(strings)).tolist()
    else:
        rest = objective.losses(docs, init, torch.tensor(strings[1:])).tolist() if len(strings) > 1 else []
        losses = [init_loss, *rest]
    buffer: list[tuple[float, list[int]]] = []
    for loss, string in zip(losses, strings):
        buffer_add(buffer, max(1, cfg.buffer_size), loss, string)
    match = False
    if targeted and not cfg.universal:
        match = bool(objective.exact_match(docs, buffer[0][1])[1].all())
    state = SearchState(key=key, step=0, current=list(buffer[0][1]), buffer=buffer, best=(buffer[0][0],
                        list(buffer[0][1])), best_match=match, generator=[], steps_to_success=0 if match else None,
                        losses=[])
    state.charged = objective.scorer.queries + objective.scorer.gradient_calls
    return state


# -- stages ------------------------------------------------------------------------------------------------------

def init_string(tokenizer: Any, cfg: GCGConfig, where: str) -> list[int]:
    """The first string: ``optim_str_init``, or nanoGCG's "x x ... x" (one token per "x" on GPT-NeoX and Llama
    vocabularies; where "x x" splits otherwise, the first ``n_tokens`` tokens of a longer one, if they re-encode)."""
    text = cfg.optim_str_init if cfg.optim_str_init is not None else " ".join(["x"] * cfg.n_tokens)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if cfg.optim_str_init is None and len(ids) != cfg.n_tokens:
        ids = tokenizer(" ".join(["x"] * 2 * cfg.n_tokens), add_special_tokens=False)["input_ids"][:cfg.n_tokens]
        if tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] != ids:
            raise HarnessError(f"{where}: nanoGCG's default first string \"x x ... x\" does not make {cfg.n_tokens} "
                               "tokens of this vocabulary; fix: set `optim_str_init:`")
    if len(ids) != cfg.n_tokens:
        raise HarnessError(f"{where}.optim_str_init: {text!r} is {len(ids)} tokens, n_tokens is {cfg.n_tokens}; fix: "
                           "make them agree")
    return list(ids)


def targets(model: LoadedModel, cfg: GCGConfig, source: DocumentSource | None, examples: Sequence[Example],
            where: str) -> list[tuple[int, ...]]:
    """The tokens scored after the string, per example: its continuation, or its target (the fixed text, or the
    ``target_field`` of the example's document in ``source``); checks the length."""
    tok = model.tokenizer
    if cfg.objective == "untargeted":
        tails = [ex.continuation for ex in examples]
    elif cfg.target is not None:
        tails = [tuple(tok(cfg.target, add_special_tokens=False)["input_ids"])] * len(examples)
    else:
        assert source is not None and cfg.target_field is not None
        texts = {d.id: d.text for d in load_documents(source.model_copy(update={"text_field": cfg.target_field}))}
        missing = [ex.id for ex in examples if not texts.get(ex.id)]
        if missing:
            raise HarnessError(f"{where}.target_field: document {missing[0]} has no '{cfg.target_field}' text; fix: "
                               "give every document a target, or a fixed `target:`")
        tails = [tuple(tok(texts[ex.id], add_special_tokens=False)["input_ids"]) for ex in examples]
    string = 0 if cfg.edit == "context" else cfg.n_tokens
    need = int(cfg.prefix_eos) + cfg.context_tokens + string + max(len(t) for t in tails)
    if need > model.max_length:
        raise HarnessError(f"{where}: the target/continuation makes sequences of {need} tokens, more than the "
                           f"{model.max_length} positions of model '{model.name}'; fix: a shorter target or context")
    return tails


def attack_examples(model: LoadedModel, ctx: StageContext, cfg: GCGConfig, control: bool) -> dict[str, Any]:
    """One search per example (the core's loop; a search resumes inside the example it was interrupted in)."""
    where = ctx.stage.entry
    assert cfg.data is not None
    examples = make_examples(load_documents(cfg.data), model, cfg, where=f"{where}.data")
    examples = select_examples(examples, cfg.n_examples, cfg.sample, ctx)
    tails = dict(zip((ex.id for ex in examples), targets(model, cfg, cfg.data, examples, where)))
    allowed = allowed_tokens(model, cfg.vocab)
    init = None if cfg.edit == "context" else init_string(model.tokenizer, cfg, where)
    scorer = Scorer(model, cfg.batch_tokens, cfg.screen)

    def attack_example(ex: Example) -> dict[str, Any]:
        scorer.forget()  # each search starts without cached keys and values, as a resumed one does
        scorer.screen_stats.clear()  # the screen's record fields are per example, as the budget is
        return attack_one(scorer, model.tokenizer, Problem([ex], [tails[ex.id]], cfg.edit, cfg.objective), init,
                          allowed, cfg,
                          attack_rng(ctx, "gcg", ex.id), ctx, control)

    records = run_examples(ctx, examples, attack_example, scorer=scorer, show=attack_progress)
    return gcg_summary(records, cfg)


def attack_one(scorer: Scorer, tok: Any, problem: Problem, init: list[int] | None, allowed: torch.Tensor,
               cfg: GCGConfig, gen: torch.Generator, ctx: StageContext | None, control: bool = False) -> dict[str, Any]:
    """Search one example with ``scorer`` (which counts what it spends) and tokenizer ``tok``; its record."""
    ex = problem.examples[0]
    objective = Objective(scorer, problem, cfg)
    targeted = cfg.objective == "targeted"
    k = len(problem.tails[0])
    before = float(scorer.nll(torch.tensor([problem.ids(0, None)]), k)[0])
    start = list(ex.context) if init is None else init
    # A context edit starts from the document itself: its loss is the unattacked NLL, scored just now.
    known = objective.sign * before if init is None and objective.custom is None else None
    state = search(objective, start, allowed, tok, cfg, gen, ex.id, [[0]], ctx,
                   untargeted_before=None if targeted else before, threshold=cfg.threshold, init_loss=known,
                   control=control)
    string = state.best[1]
    if targeted:
        nll, match = objective.exact_match([0], string)  # the target NLL itself (the loss may be mellowmax)
    fields: dict[str, Any] = {**scorer.screen_record(), "steps": state.step, "dropped_candidates": state.dropped,
                              "adversarial_ids": string, "adversarial_text": tok.decode(string)}
    if not targeted and objective.custom is None:  # the loss is minus the NLL: the best NLL after each step
        fields[PROGRESS_FIELD] = best_so_far(before, [-loss for loss in state.losses])
    if cfg.edit == "context":
        fields["positions"] = [i for i, (a, b) in enumerate(zip(ex.context, string)) if a != b]
        fields["original_text"] = tok.decode(list(ex.context))
    if not targeted:
        record = example_record(ex.id, before, -state.best[0], cfg.threshold, **fields)
    else:
        record = example_record(ex.id, before, float(nll[0]), cfg.threshold, **fields)
        record.update(success=bool(match[0]), exact_match=bool(match[0]), target_nll=float(nll[0]),
                      target_text=tok.decode(list(problem.tails[0])),
                      steps_to_success=state.steps_to_success if bool(match[0]) else None)
    return record


def gcg_summary(records: Sequence[dict[str, Any]], cfg: GCGConfig) -> dict[str, Any]:
    """What does not follow from a declaration: the shared attack summary's, the positions, the median steps to
    success (the core computes success, NLL, steps and the budget from the records)."""
    metrics = attack_summary(records, cfg.threshold)
    if cfg.edit == "context" and not cfg.universal:
        metrics[POSITIONS_METRIC.name] = position_histogram(records, cfg.context_tokens)
    if cfg.objective == "targeted":
        steps = [r["steps_to_success"] for r in records if r.get("steps_to_success") is not None]
        metrics["median_steps_to_success"] = float(np.median(steps)) if steps else None
    return metrics


def attack_universal(model: LoadedModel, ctx: StageContext, cfg: GCGConfig, control: bool) -> dict[str, Any]:
    """One string optimised on the optimisation split only, then judged on the held-out split (as UAT)."""
    where = ctx.stage.entry
    assert cfg.opt_data is not None and cfg.eval_data is not None
    opt, held_out = disjoint_splits(model, cfg, cfg.opt_data, cfg.eval_data, cfg.n_opt, cfg.n_eval, where)
    tok = model.tokenizer
    allowed = allowed_tokens(model, cfg.vocab)
    init = init_string(tok, cfg, where)
    problem = Problem(opt, targets(model, cfg, cfg.opt_data, opt, where), cfg.edit, cfg.objective)
    order = torch.randperm(len(opt), generator=attack_rng(ctx, "gcg", "universal", "order")).tolist()
    size = min(cfg.batch_size, len(opt))
    n_batches = -(-len(opt) // size)
    batches = [[order[(b * size + j) % len(opt)] for j in range(size)] for b in range(n_batches)]
    scorer = Scorer(model, cfg.batch_tokens, cfg.screen)
    objective = Objective(scorer, problem, cfg)
    state = search(objective, init, allowed, tok, cfg, attack_rng(ctx, "gcg", "universal"), "universal", batches, ctx,
                   control=control)
    string = state.best[1]
    summary: dict[str, Any] = {"n_opt": len(opt), **optimisation_budget(scorer.budget), "steps": state.step,
                               "dropped_candidates": state.dropped, "adversarial_ids": string,
                               "adversarial_text": tok.decode(string), "tokenizer_fingerprint": tokenizer_fingerprint(tok)}
    if cfg.objective == "untargeted":
        # Held-out numbers through UAT's evaluation, so that uat_transfer's diagonal reproduces them.
        records = evaluate_trigger(Scorer(model, cfg.batch_tokens), held_out, string, model, ctx, cfg.threshold,
                                   placement=cfg.edit)
        metrics = attack_summary(records, cfg.threshold)
        metrics.update(summary, trigger_ids=string, trigger_text=tok.decode(string), trigger_placement=cfg.edit)
        return metrics
    held = Problem(held_out, targets(model, cfg, cfg.eval_data, held_out, where), cfg.edit, cfg.objective)
    judge = Objective(Scorer(model, cfg.batch_tokens), held, cfg)

    def judge_all(examples: list[Example]) -> list[dict[str, Any]]:
        """Every held-out example in one chunk: 2 queries each, the passes shared equally by the core's loop."""
        docs = list(range(len(examples)))
        before, _ = judge.scores(docs, None)
        after, match = judge.exact_match(docs, string)
        records = []
        for i, ex in enumerate(examples):
            record = example_record(ex.id, float(before[i]), float(after[i]), cfg.threshold,
                                    adversarial_ids=string, adversarial_text=tok.decode(string))
            record.update(success=bool(match[i]), exact_match=bool(match[i]), target_nll=float(after[i]),
                          target_text=tok.decode(list(held.tails[i])))
            records.append(record)
        return records

    records = run_chunks(ctx, held_out, len(held_out), judge_all, scorer=judge.scorer, label="held-out")
    metrics = gcg_summary(records, cfg)
    metrics.update(summary)
    return metrics


class GCGAttack(AttackPlugin[GCGConfig]):
    """Greedy Coordinate Gradient (nanoGCG's loop): gradient top-k candidates, scored exactly in batches."""

    name = "gcg"
    version = "3"  # FLOPs count the vocabulary projection where it runs; `screen:` (off by default)
    # v2: `mode: random_token` gives way to `control_of:`; the record metrics computed by the core
    randomizable = True

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        run = attack_universal if cfg.universal else attack_examples
        return run(model, ctx, cfg, self.is_control())

    def reuse_config(self) -> dict[str, Any] | None:
        """One search per example with a stream keyed by the example: a change of ``n_examples`` keeps the records
        (not for a universal string, optimised over the whole split)."""
        if self.config.universal:
            return None
        return self.config.model_dump(mode="json", exclude={"n_examples"})

    def declared_metrics(self) -> list[MetricSpec]:
        cfg = self.config
        specs = [*ATTACK_METRICS, *([POSITIONS_METRIC] if cfg.edit == "context" and not cfg.universal else []),
                 MetricSpec("mean_steps", "GCG steps", field="steps", digits=1, show=False)]
        if cfg.objective == "targeted":
            specs += [MetricSpec("exact_match_rate", "Exact match (%)", field="exact_match", scale=100, digits=1),
                      MetricSpec("mean_target_nll", "Target NLL", field="target_nll", higher_is_better=True),
                      MetricSpec("median_steps_to_success", "Steps to success", aggregation="none", digits=0,
                                 show=False)]
        return specs

    def plan(self, inputs: PlanInputs) -> Workload:
        """Queries and gradient passes of this stage, from the config (upper bounds; ``harness plan``)."""
        return gcg_workload(self.config, inputs, control=self.is_control())


def gcg_workload(cfg: GCGConfig, inputs: PlanInputs, control: bool = False) -> Workload:
    """Per search: the initial scores, then per step one gradient pass (not the control's), ``search_width``
    candidates (fewer after ``filter_ids``), and a targeted search's exact-match check; capped by ``max_queries``."""

    string = 0 if cfg.edit == "context" else cfg.n_tokens
    tail = cfg.continuation_tokens  # a target's length is unknown before tokenising: the continuation's stands in
    length = int(cfg.prefix_eos) + cfg.context_tokens + string + tail
    if cfg.universal:
        n_opt, note = planned_examples(inputs, cfg.opt_data, cfg.n_opt, cfg, "opt_data")
        n_eval, note_eval = planned_examples(inputs, cfg.eval_data, cfg.n_eval, cfg, "eval_data")
        docs, searches, note = min(cfg.batch_size, n_opt), 1, note + note_eval
    else:
        n_eval, note = planned_examples(inputs, cfg.data, cfg.n_examples, cfg, "data")
        docs, searches = 1, n_eval
    check = docs if cfg.objective == "targeted" and not cfg.universal else 0
    grad = 0 if control else docs
    per_step = docs * cfg.search_width + check
    # With a screen, the candidates' forward tokens are priced as the screen spends them (draft + exact scores).
    width = cfg.search_width if cfg.screen is None else cfg.screen.cost_in_candidates(cfg.search_width,
                                                                                       inputs.shape.n_layers)
    priced = docs * width + check
    # max_queries caps a search's exact evaluations plus gradient passes (the control is charged them too).
    steps_run = cfg.num_steps if cfg.max_queries is None else min(cfg.num_steps, cfg.max_queries // (docs + per_step))
    scored = docs * max(1, cfg.buffer_size) + cfg.num_steps * per_step + 1 + check
    if cfg.max_queries is not None:
        scored = min(scored, cfg.max_queries + 1)
    grads = steps_run * grad
    scored = searches * scored + (2 * n_eval if cfg.universal else 0)
    grads *= searches
    rows = max(1, min(cfg.search_width * docs, cfg.planned_batch_tokens // length))
    batches = [Batch(rows, length, logit_positions=tail + 1, label="exact scoring")]
    if grad:
        batches.append(Batch(docs, length, "inputs", logit_positions=tail + 1, label="token gradients"))
    priced_scored = scored if cfg.screen is None else scored * priced / per_step
    return Workload(forward_tokens=priced_scored * length, gradient_tokens=grads * length, context=length,
                    queries=scored + grads, forward_calls=searches * (2 + steps_run * (1 + bool(check))),
                    gradient_calls=searches * steps_run if grad else 0, batches=batches,
                    disk_bytes=n_eval * RECORD_BYTES, disk_note="per-example records",
                    notes=[f"{searches:,} search(es) x {steps_run} steps x ({'1 gradient + ' if grad else ''}"
                           f"{cfg.search_width} candidates x {docs} document(s)), {length} tokens each "
                           f"(queries: an upper bound; filter_ids may leave room for more, cheaper steps){note}"])


@hookimpl
def harness_attacks() -> list[type]:
    return [GCGAttack]
