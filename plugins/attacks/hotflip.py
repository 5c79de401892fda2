"""Attack plugin ``hotflip``: HotFlip (Ebrahimi et al. 2018) adapted to causal LMs.

Per example, the attacker edits context tokens to raise the model's NLL of the continuation. Each step:

1. one forward + backward pass gives the gradient of the continuation loss w.r.t. the one-hot input; its dot
   product with every token embedding is the first-order estimate of the loss change of every (position, token)
   swap over the editable positions (positions flipped already are frozen);
2. the ``beam_width`` swaps with the highest estimates are scored exactly in batched forward passes (tokens
   before a swap reuse the cached keys and values of the current sequence where that saves time);
3. the best one is kept if it raises the loss; otherwise the step is spent and those swaps are not proposed again.

Up to ``flips`` steps (a count, or a fraction of the context tokens). The per-example Spearman correlation between
the estimates and the exact loss changes of the swaps scored shows how far the linearisation can be trusted (on a
monotonic model, say). Its random control (``control_of: <this entry>``) runs this same loop with ``beam_width``
random (position, token) swaps instead of step 1, drawn from a stream keyed by (example, step): the swaps a step
offers do not depend on the path the search took to get there.
"""

from __future__ import annotations

import math

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field

from harness import (RECORD_BYTES, AttackPlugin, Batch, DocumentSource, LoadedModel, MetricSpec, PlanInputs,
                     StageContext, Workload, hookimpl, load_documents, planned_examples, sequence_length)
from harness.attacks import (ATTACK_METRICS, POSITIONS_METRIC, PROGRESS_FIELD, Example, Scorer, TaskConfig,
                             allowed_tokens, attack_progress, attack_rng, attack_summary, example_record,
                             make_examples, position_histogram, select_examples, spearman)
from harness.loop import run_examples

from . import SUCCESS_THRESHOLD

#: Proposes swaps for the current sequence: (ids, editable positions, swaps already tried at these ids, step) ->
#: (swaps as (position, token) pairs, first-order estimates of their loss change or None).
Proposer = Callable[[list[int], list[int], set[tuple[int, int]], int],
                    tuple[list[tuple[int, int]], list[float] | None]]


class HotFlipConfig(TaskConfig):
    limit_fields = ("n_examples",)  # `harness run --limit N` caps these
    #: Success: the continuation NLL raised by more than this fraction (the built-in attacks' shared choice).
    threshold: float = Field(default=SUCCESS_THRESHOLD, ge=0)
    #: The documents attacked, one by one.
    data: DocumentSource
    #: Examples to attack (the first usable documents, or a seeded sample; see ``sample``); None = all.
    n_examples: int | None = Field(default=None, ge=1)
    #: Which ``n_examples``: the first usable documents, or a sample seeded by the suite's seed (nested: a larger
    #: ``n_examples`` keeps the smaller one's documents).
    sample: Literal["first", "seeded"] = "first"
    #: Steps (at most one flip each): a count, or a fraction (0, 1] of the context tokens.
    flips: Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, le=1)] = 10
    #: Swaps scored exactly per step (the top first-order candidates), in one batched forward pass.
    beam_width: int = Field(default=32, ge=1)


def n_flips(flips: int | float, n_context: int) -> int:
    if isinstance(flips, int):
        return min(flips, n_context)
    return max(1, round(flips * n_context))


@dataclass
class FlipOutcome:
    ids: list[int]
    nll_before: float
    nll_after: float
    flipped: dict[int, tuple[int, int]] = field(default_factory=dict)  # position -> (old token, new token)
    estimates: list[float] = field(default_factory=list)
    changes: list[float] = field(default_factory=list)  # exact loss change of every swap scored
    steps: int = 0
    nll_by_step: list[float] = field(default_factory=list)  # the NLL after each step (index 0: before)


def flip_search(scorer: Scorer, example: Example, steps: int, propose: Proposer) -> FlipOutcome:
    """The greedy flip loop shared by HotFlip and its random control; only ``propose`` differs."""
    ids = example.ids()
    k = len(example.continuation)
    context = list(range(len(example.prefix), len(example.prefix) + len(example.context)))
    current = float(scorer.nll(torch.tensor([ids]), k)[0])
    out = FlipOutcome(list(ids), current, current, nll_by_step=[current])
    tried: set[tuple[int, int]] = set()
    for step in range(steps):
        editable = [p for p in context if p not in out.flipped]
        swaps, estimates = propose(ids, editable, tried, step)
        if not swaps:
            break
        out.steps += 1
        batch = torch.tensor([ids] * len(swaps))
        batch[torch.arange(len(swaps)), torch.tensor([p for p, _ in swaps])] = torch.tensor([t for _, t in swaps])
        # Single swaps: the prefix before each is unchanged. A screen scores only the best few exactly (-inf: not).
        exact = scorer.swap_nll(torch.tensor(ids), batch, k, select="max")
        scored = [math.isfinite(c) for c in exact.tolist()]  # a screen scores only some swaps exactly
        out.changes += [c for c, s in zip((exact - current).tolist(), scored) if s]
        if estimates is not None:  # paired with the exact changes
            out.estimates += [e for e, s in zip(estimates, scored) if s]
        best = int(exact.argmax())
        if exact[best] > current:  # keep the best swap; the next step proposes from the new sequence
            pos, tok = swaps[best]
            out.flipped[pos] = (ids[pos], tok)
            ids = batch[best].tolist()
            current = float(exact[best])
            tried.clear()
        else:
            tried.update(swaps)
        out.nll_by_step.append(current)
    out.ids, out.nll_after = ids, current
    return out


def gradient_proposer(scorer: Scorer, allowed: torch.Tensor, n_scored: int, beam_width: int) -> Proposer:
    """HotFlip's candidates: the swaps with the largest first-order loss increase."""
    cache: dict[tuple[int, ...], tuple[list[int], torch.Tensor]] = {}

    def propose(ids: list[int], editable: list[int], tried: set[tuple[int, int]], step: int):
        if not editable:
            return [], None
        key = tuple(ids)
        if key not in cache or cache[key][0] != editable:  # an unchanged sequence keeps its gradient
            cache.clear()
            cache[key] = (editable, scorer.token_gradients(torch.tensor([ids]), n_scored, editable))
        grad = cache[key][1]
        current = torch.tensor([ids[p] for p in editable])
        estimate = grad - grad.gather(1, current[:, None])  # loss change of each swap, to first order
        estimate[:, ~allowed] = -torch.inf
        estimate[torch.arange(len(editable)), current] = -torch.inf
        row = {p: i for i, p in enumerate(editable)}
        for p, t in tried:
            if p in row:
                estimate[row[p], t] = -torch.inf
        flat = estimate.flatten()
        n = min(beam_width, int(torch.isfinite(flat).sum()))
        top = flat.topk(n)
        vocab = estimate.shape[1]
        swaps = [(editable[i // vocab], i % vocab) for i in top.indices.tolist()]
        return swaps, top.values.tolist()

    return propose


def random_proposer(allowed: torch.Tensor, beam_width: int, stream: Callable[[int], torch.Generator]) -> Proposer:
    """The control's candidates: ``beam_width`` distinct untried swaps, uniform over (editable position, allowed
    token), drawn from ``stream(step)``."""
    allowed_ids = allowed.nonzero()[:, 0]

    def propose(ids: list[int], editable: list[int], tried: set[tuple[int, int]], step: int):
        gen = stream(step)
        swaps: list[tuple[int, int]] = []
        seen = set(tried)
        for _ in range(20):  # rejection sampling; the pool (positions x vocabulary) dwarfs beam_width
            if len(swaps) == beam_width or not editable:
                break
            pos = torch.randint(len(editable), (beam_width,), generator=gen).tolist()
            tok = allowed_ids[torch.randint(len(allowed_ids), (beam_width,), generator=gen)].tolist()
            for p, t in zip(pos, tok):
                swap = (editable[p], t)
                if t != ids[swap[0]] and swap not in seen and len(swaps) < beam_width:
                    seen.add(swap)
                    swaps.append(swap)
        return swaps, None

    return propose


#: What HotFlip adds to the shared attack summary: flips per example (from the summary) and the positions.
FLIP_METRICS = [
    MetricSpec("mean_flips", "Flips / example", digits=2, show=False),
    POSITIONS_METRIC,
]
#: HotFlip's own: how far its first-order estimates rank the swaps as the exact scores do. The mean over the examples
#: that have one (records with `spearman: null` are not examples of it).
SPEARMAN_METRIC = MetricSpec("spearman_mean", "Spearman (estimate vs exact)", field="spearman", digits=2, show=False)


def flip_summary(records: Sequence[dict[str, Any]], cfg: HotFlipConfig) -> dict[str, Any]:
    """What does not follow from a declaration: the shared attack summary's, flips per example, the positions."""
    return {**attack_summary(records, cfg.threshold),
            "mean_flips": float(np.mean([len(r["positions"]) for r in records])) if records else 0.0,
            POSITIONS_METRIC.name: position_histogram(records, cfg.context_tokens)}


# -- cost model (harness plan) ------------------------------------------------------------------------------------
def flip_workload(cfg: HotFlipConfig, inputs: PlanInputs, gradient: bool) -> Workload:
    """HotFlip (``gradient``) or its random control: per example, ``steps`` x (a gradient pass + beam_width scores).

    Follows :meth:`HotFlipAttack.attack`, an upper bound where it stops early: every step is assumed to run."""
    n, note = planned_examples(inputs, cfg.data, cfg.n_examples, cfg, "data")
    length = sequence_length(cfg)
    steps = n_flips(cfg.flips, cfg.context_tokens)
    scored = n * (1 + steps * cfg.beam_width)
    grads = n * steps if gradient else 0
    rows = max(1, min(cfg.beam_width, cfg.planned_batch_tokens // length))
    batches = [Batch(rows, length, logit_positions=cfg.continuation_tokens + 1, label="exact scoring")]
    if gradient:
        batches.append(Batch(1, length, "inputs", logit_positions=cfg.continuation_tokens + 1,
                             label="token gradients"))
    # Calls: per example the unedited sequence, then per step one scoring call (and one gradient call).
    return Workload(forward_tokens=scored * length, gradient_tokens=grads * length, context=length,
                    queries=scored + grads, forward_calls=n * (1 + steps), gradient_calls=grads,
                    batches=batches, disk_bytes=n * RECORD_BYTES,
                    disk_note="per-example records",
                    notes=[f"{n:,} examples x {steps} steps x ({'1 gradient + ' if gradient else ''}"
                           f"{cfg.beam_width} scores), {length} tokens each (upper bound){note}"])


class HotFlipAttack(AttackPlugin[HotFlipConfig]):
    """HotFlip on causal LMs: gradient-ranked token swaps in the context, scored exactly in batches."""

    name = "hotflip"
    version = "4"  # FLOPs count the vocabulary projection where it runs; `screen:` (off by default)
    # v3: the random control is this plugin (`control_of:`), its swaps keyed by (example, step)
    # v2: records and summary gain the budget (tokens, FLOPs) and the position histogram
    randomizable = True

    def declared_metrics(self) -> list[MetricSpec]:
        return ATTACK_METRICS + FLIP_METRICS + ([] if self.is_control() else [SPEARMAN_METRIC])

    def reuse_config(self) -> dict[str, Any]:
        """Each example's search depends on that example alone: a change of ``n_examples`` keeps the records."""
        return self.config.model_dump(mode="json", exclude={"n_examples"})

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        examples = make_examples(load_documents(cfg.data), model, cfg, where=f"{ctx.stage.entry}.data")
        examples = select_examples(examples, cfg.n_examples, cfg.sample, ctx)
        allowed = allowed_tokens(model, cfg.vocab)
        tok = model.tokenizer
        scorer = Scorer(model, cfg.batch_tokens, cfg.screen)

        def attack_example(ex: Example) -> dict[str, Any]:
            if self.is_control():
                propose = random_proposer(allowed, cfg.beam_width,
                                          lambda step: attack_rng(ctx, "hotflip", "control", ex.id, step))
            else:
                propose = gradient_proposer(scorer, allowed, len(ex.continuation), cfg.beam_width)
            out = flip_search(scorer, ex, n_flips(cfg.flips, len(ex.context)), propose)
            start = len(ex.prefix)
            edited = out.ids[start:start + len(ex.context)]
            positions = sorted(out.flipped)
            return example_record(
                ex.id, out.nll_before, out.nll_after, cfg.threshold, steps=out.steps,
                positions=[p - start for p in positions], original_tokens=[out.flipped[p][0] for p in positions],
                new_tokens=[out.flipped[p][1] for p in positions],
                adversarial_text=tok.decode(edited), original_text=tok.decode(list(ex.context)),
                spearman=spearman(out.estimates, out.changes) if out.estimates else None,
                **{PROGRESS_FIELD: out.nll_by_step})

        records = run_examples(ctx, examples, attack_example, scorer=scorer, show=attack_progress)
        return flip_summary(records, cfg)

    def plan(self, inputs: PlanInputs) -> Workload:
        """Queries and gradient passes of this stage, from the config (``harness plan``)."""
        return flip_workload(self.config, inputs, gradient=not self.is_control())


@hookimpl
def harness_attacks() -> list[type]:
    return [HotFlipAttack]
