"""Attack plugin ``uat``: universal adversarial triggers (Wallace et al. 2019) for causal LMs.

One trigger of ``trigger_length`` tokens is prepended to every document's context (after the end-of-text token)
and optimised to raise the mean continuation NLL over an **optimisation split**; it is then evaluated on a
**disjoint held-out split**, whose numbers are the ones reported. Each iteration of a restart:

1. takes the next ``batch_size`` optimisation documents and averages the gradient of their loss w.r.t. the one-hot
   trigger tokens;
2. keeps, per trigger position, the ``top_k`` tokens with the largest first-order loss increase;
3. beam-searches those candidates position by position (left to right, ``beam_size`` beams, the current trigger
   among them), scoring every candidate trigger exactly on the batch in one batched call; the best beam becomes the
   trigger.

Several restarts start from different random triggers (the same ones for every model and for the control at a
seed); the one with the highest mean NLL on the whole optimisation split wins. State is saved after every
iteration, so an interrupted stage resumes at the last finished one (the optimisation keeps its own loop: its state
spans documents). Its random control (``control_of: <this entry>``) runs this same loop with ``top_k`` random
allowed tokens per position instead of steps 1-2 (random coordinate search, like the published study's UAT), on the
same splits, from the same initial triggers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from harness import (RECORD_BYTES, AttackPlugin, Batch, DocumentSource, HarnessError, LoadedModel, MetricSpec,
                     PlanInputs, StageContext, StagePreempted, Workload, hookimpl, planned_examples, sequence_length)
from harness.attacks import (ATTACK_METRICS, Budget, Example, Scorer, TaskConfig, allowed_tokens, attack_rng,
                             attack_summary, disjoint_splits, random_allowed)
from harness.triggers import (EVAL_CHUNK, evaluate_trigger, optimisation_budget, tokenizer_fingerprint,
                              triggered_batch)

from . import SUCCESS_THRESHOLD

#: Candidate tokens per trigger position: (scorer, batch ids [B, T], n_scored, trigger positions, trigger, restart,
#: iteration) -> LongTensor [trigger_length, top_k].
CandidateFn = Callable[[Scorer, torch.Tensor, int, list[int], list[int], int, int], torch.Tensor]


class UATConfig(TaskConfig):
    limit_fields = ("n_opt", "n_eval")  # `harness run --limit N` caps these
    #: Success: the continuation NLL raised by more than this fraction (the built-in attacks' shared choice).
    threshold: float = Field(default=SUCCESS_THRESHOLD, ge=0)
    #: Documents the trigger is optimised on.
    opt_data: DocumentSource
    #: Held-out documents the trigger is evaluated on (must not overlap opt_data).
    eval_data: DocumentSource
    #: Usable documents taken from each split (the first ones); None = all.
    n_opt: int | None = Field(default=None, ge=1)
    #: Usable held-out documents taken (see ``eval_sample``); None = all.
    n_eval: int | None = Field(default=None, ge=1)
    #: How the held-out documents are chosen: the first ``n_eval``, or the first ``n_eval`` of the seeded order that
    #: every attack's ``sample: seeded`` uses (so they nest with the per-example attacks' documents at each seed).
    eval_sample: Literal["first", "seeded"] = "first"
    #: Tokens in the trigger (prepended to each document's context).
    trigger_length: int = Field(default=10, ge=1)
    #: Searches from different random triggers; the one with the highest mean NLL on the optimisation split wins.
    restarts: int = Field(default=3, ge=1)
    #: Iterations per restart.
    iterations: int = Field(default=10, ge=1)
    #: Optimisation documents per iteration (one averaged gradient, exact scoring of every candidate on them).
    batch_size: int = Field(default=16, ge=1)
    #: Candidate tokens per trigger position, by first-order score.
    top_k: int = Field(default=10, ge=1)
    #: Triggers kept between positions of the left-to-right beam search.
    beam_size: int = Field(default=2, ge=1)


def load_splits(model: LoadedModel, cfg: UATConfig, where: str,
                seed: int | None = None) -> tuple[list[Example], list[Example]]:
    """The optimisation and held-out examples (``seed``: the stage's, for a seeded held-out sample); refuses
    overlapping splits."""
    need = int(cfg.prefix_eos) + cfg.trigger_length + cfg.context_tokens + cfg.continuation_tokens
    if need > model.max_length:
        raise HarnessError(f"{where}: trigger_length + context_tokens + continuation_tokens (+1) = {need} exceeds the "
                           f"{model.max_length} positions of model '{model.name}'; fix: make them smaller")
    return disjoint_splits(model, cfg, cfg.opt_data, cfg.eval_data, cfg.n_opt, cfg.n_eval, where,
                           eval_seed=seed if cfg.eval_sample == "seeded" else None)


def mean_loss(scorer: Scorer, examples: Sequence[Example], triggers: Sequence[Sequence[int]]) -> torch.Tensor:
    """Mean continuation NLL over ``examples`` of each trigger, all triggers in one batched call."""
    k = len(examples[0].continuation)
    rows = scorer.nll(triggered_batch(examples, triggers), k, select="max", group=len(examples))
    return rows.view(len(triggers), len(examples)).mean(1)


def gradient_candidates(top_k: int, allowed: torch.Tensor) -> CandidateFn:
    """UAT's candidates: per position, the tokens with the largest first-order increase of the batch loss."""

    def candidates(scorer: Scorer, ids: torch.Tensor, n_scored: int, positions: list[int], trigger: list[int],
                   restart: int, iteration: int) -> torch.Tensor:
        grad = scorer.token_gradients(ids, n_scored, positions)  # averaged over the batch's documents
        current = torch.tensor(trigger)
        estimate = grad - grad.gather(1, current[:, None])
        estimate[:, ~allowed] = -torch.inf
        estimate[torch.arange(len(trigger)), current] = -torch.inf
        return estimate.topk(min(top_k, int(allowed.sum())), dim=1).indices

    return candidates


def random_candidates(top_k: int, allowed: torch.Tensor, ctx: StageContext) -> CandidateFn:
    """The control's candidates: per position, ``top_k`` uniform allowed tokens (no gradient pass), drawn from a
    stream keyed by (restart, iteration). The key's "random_token" names the plugin that ran this control before
    ``control_of:``; kept, so the control draws the very tokens it always did."""

    def candidates(scorer: Scorer, ids: torch.Tensor, n_scored: int, positions: list[int], trigger: list[int],
                   restart: int, iteration: int) -> torch.Tensor:
        gen = attack_rng(ctx, "random_token", "candidates", restart, iteration)
        return random_allowed(allowed, len(positions) * top_k, gen).view(len(positions), top_k)

    return candidates


def beam_search(scorer: Scorer, batch: Sequence[Example], trigger: list[int], candidates: torch.Tensor,
                beam_size: int) -> tuple[list[int], float]:
    """Best trigger on ``batch`` from swapping candidate tokens in, position by position (Wallace et al.)."""
    beams = [(float(mean_loss(scorer, batch, [trigger])[0]), trigger)]
    for pos in range(len(trigger)):
        expanded = {tuple(t[:pos] + [int(c)] + t[pos + 1:]) for _, t in beams for c in candidates[pos]}
        expanded -= {tuple(t) for _, t in beams}  # beams keep their known losses
        new = [list(t) for t in sorted(expanded)]
        if new:
            losses = mean_loss(scorer, batch, new)  # every candidate trigger on every document: one batched call
            # A screen scores only some candidates exactly (the others -inf): they never enter the beam.
            beams += [(float(loss), t) for loss, t in zip(losses, new) if math.isfinite(float(loss))]
        beams = sorted(beams, key=lambda b: -b[0])[:beam_size]
    return beams[0][1], beams[0][0]


def optimise_trigger(scorer: Scorer, opt: Sequence[Example], allowed: torch.Tensor, cfg: UATConfig,
                     candidates: CandidateFn, ctx: StageContext) -> dict[str, Any]:
    """Restarts x iterations of candidate proposal + beam search on ``opt`` only; resumes from the saved state."""
    state = ctx.load_state("uat") or {"restart": 0, "iteration": 0, "trigger": None, "finished": [], "history": [],
                                      "budget": Budget().state()}
    scorer.budget = Budget(**state["budget"])  # what the finished iterations spent
    n_scored = len(opt[0].continuation)
    start = len(opt[0].prefix)
    positions = list(range(start, start + cfg.trigger_length))
    with ctx.progress("trigger iterations", cfg.restarts * cfg.iterations) as bar:
        bar.advance(state["restart"] * cfg.iterations + state["iteration"])
        while state["restart"] < cfg.restarts:
            restart = state["restart"]
            if state["trigger"] is None:
                init = attack_rng(ctx, "uat", "init", restart)
                state["trigger"] = random_allowed(allowed, cfg.trigger_length, init).tolist()
            order = torch.randperm(len(opt), generator=attack_rng(ctx, "uat", "order", restart)).tolist()
            while state["iteration"] < cfg.iterations:
                if ctx.should_stop:  # the state of the last finished iteration is saved
                    raise StagePreempted(ctx.stage.id)
                it = state["iteration"]
                batch = [opt[order[(it * cfg.batch_size + j) % len(opt)]] for j in range(min(cfg.batch_size, len(opt)))]
                ids = triggered_batch(batch, [state["trigger"]])
                cands = candidates(scorer, ids, n_scored, positions, state["trigger"], restart, it)
                trigger, loss = beam_search(scorer, batch, state["trigger"], cands, cfg.beam_size)
                state["history"].append({"restart": restart, "iteration": it, "batch_nll": loss})
                state.update(trigger=trigger, iteration=it + 1, budget=scorer.budget.state())
                ctx.save_state("uat", state)
                bar.advance()
                bar.set(restart=restart, batch_nll=loss, queries=scorer.queries + scorer.gradient_calls)
            # The restart's trigger, judged on the whole optimisation split (never on held-out documents).
            opt_nll = float(mean_loss(scorer, opt, [state["trigger"]])[0])
            state["finished"].append({"trigger_ids": state["trigger"], "opt_nll": opt_nll})
            state.update(restart=restart + 1, iteration=0, trigger=None, budget=scorer.budget.state())
            ctx.save_state("uat", state)
    return state


def run_uat(model: LoadedModel, ctx: StageContext, cfg: UATConfig,
            make_candidates: Callable[[torch.Tensor], CandidateFn]) -> dict[str, Any]:
    """Optimise on the optimisation split, evaluate on the held-out one; the summary metrics are held-out numbers."""
    opt, held_out = load_splits(model, cfg, ctx.stage.entry, ctx.seed)
    allowed = allowed_tokens(model, cfg.vocab)
    scorer = Scorer(model, cfg.batch_tokens, cfg.screen)
    state = optimise_trigger(scorer, opt, allowed, cfg, make_candidates(allowed), ctx)
    best = max(state["finished"], key=lambda f: f["opt_nll"])
    trigger = best["trigger_ids"]
    tok = model.tokenizer
    # Relative increase on the optimisation split, to compare with held-out (how much the trigger overfits).
    k = len(opt[0].continuation)
    opt_before = scorer.nll(torch.tensor([ex.ids() for ex in opt]), k)
    opt_after = scorer.nll(triggered_batch(opt, [trigger]), k)
    records = evaluate_trigger(Scorer(model, cfg.batch_tokens), held_out, trigger, model, ctx, cfg.threshold)
    metrics = attack_summary(records, cfg.threshold)
    metrics.update(
        trigger_ids=trigger, trigger_text=tok.decode(trigger), tokenizer_fingerprint=tokenizer_fingerprint(tok),
        opt_mean_relative_increase=float(((opt_after - opt_before) / opt_before).mean()),
        opt_mean_nll_after=float(opt_after.mean()), n_opt=len(opt),
        **optimisation_budget(Budget(**state["budget"])),
        restarts=[{"trigger_ids": f["trigger_ids"], "trigger_text": tok.decode(f["trigger_ids"]),
                   "opt_nll": f["opt_nll"]} for f in state["finished"]])
    return metrics


# -- cost model (harness plan) ------------------------------------------------------------------------------------
def uat_workload(cfg: UATConfig, inputs: PlanInputs, gradient: bool) -> Workload:
    """UAT (``gradient``) or its random control: restarts x iterations of candidates + beam search, then held-out.

    Follows :func:`run_uat`, an upper bound where it stops early: every beam is assumed to expand fully."""
    n_opt, note_opt = planned_examples(inputs, cfg.opt_data, cfg.n_opt, cfg, "opt_data")
    n_eval, note_eval = planned_examples(inputs, cfg.eval_data, cfg.n_eval, cfg, "eval_data")
    length = sequence_length(cfg, cfg.trigger_length)
    batch = min(cfg.batch_size, n_opt)
    # Beam search: the current trigger, then per position the new candidates of every beam (one beam at first).
    candidates = 1 + cfg.top_k + (cfg.trigger_length - 1) * cfg.beam_size * cfg.top_k
    iterations = cfg.restarts * cfg.iterations
    scored = iterations * batch * candidates + cfg.restarts * n_opt + 2 * n_opt + 2 * n_eval
    grads = iterations * batch if gradient else 0
    # The largest scoring call: one beam-search position (every beam's candidates on the batch), the whole
    # optimisation split (a restart's final score), or a chunk of held-out examples; batch_tokens caps it.
    largest = max(batch * cfg.beam_size * cfg.top_k, n_opt, min(EVAL_CHUNK, n_eval))
    rows = max(1, min(cfg.planned_batch_tokens // length, largest))
    batches = [Batch(rows, length, logit_positions=cfg.continuation_tokens + 1, label="exact scoring")]
    if gradient:
        batches.append(Batch(batch, length, "inputs", logit_positions=cfg.continuation_tokens + 1,
                             label="trigger gradients"))
    # Calls: per iteration the current trigger and one call per trigger position (one gradient call); per restart its
    # final score on the optimisation split; then the split without and with the trigger, held-out chunks likewise.
    calls = (iterations * (1 + cfg.trigger_length) + cfg.restarts + 2
             + 2 * -(-n_eval // EVAL_CHUNK))
    return Workload(forward_tokens=scored * length, gradient_tokens=grads * length, context=length,
                    queries=scored + grads, forward_calls=calls, gradient_calls=grads // batch if grads else 0,
                    batches=batches, disk_bytes=n_eval * RECORD_BYTES,
                    disk_note="per-example records",
                    notes=[f"{cfg.restarts} restarts x {cfg.iterations} iterations x {batch} documents x "
                           f"{candidates} candidate triggers (upper bound); {n_opt:,} optimisation + {n_eval:,} "
                           f"held-out examples, {length} tokens each{note_opt}{note_eval}"])


#: What :func:`run_uat` adds to the shared attack summary (of the held-out split).
UAT_METRICS = [
    MetricSpec("opt_mean_relative_increase", "NLL incr. on the optimisation split (%)", scale=100, digits=1,
               show=False),
    MetricSpec("opt_mean_nll_after", "NLL after, optimisation split", show=False),
    MetricSpec("n_opt", "Optimisation examples", digits=0, show=False),
    MetricSpec("optimisation_queries", "Optimisation queries", digits=0, show=False, upfront_for="mean_queries"),
    MetricSpec("gradient_calls", "Gradient passes", digits=0, show=False, upfront_for="mean_gradient_calls"),
    MetricSpec("optimisation_tokens", "Optimisation tokens", aggregation="none", digits=0, budget=True, show=False,
               upfront_for="mean_tokens"),
    MetricSpec("optimisation_gradient_tokens", "Optimisation backward tokens", aggregation="none", digits=0,
               budget=True, show=False, upfront_for="mean_gradient_tokens"),
    MetricSpec("optimisation_flops", "Optimisation FLOPs", aggregation="none", digits=0, budget=True, show=False,
               upfront_for="mean_flops"),
]


class UniversalTriggerAttack(AttackPlugin[UATConfig]):
    """Universal adversarial trigger: one gradient-searched prefix for all documents, judged on held-out ones."""

    name = "uat"
    version = "3"  # FLOPs count the vocabulary projection where it runs; `screen:` (off by default)
    # v2: records and summary gain the budget (tokens, FLOPs), the summary the optimisation's
    randomizable = True

    def declared_metrics(self) -> list[MetricSpec]:
        return ATTACK_METRICS + UAT_METRICS

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        if self.is_control():
            return run_uat(model, ctx, cfg, lambda allowed: random_candidates(cfg.top_k, allowed, ctx))
        return run_uat(model, ctx, cfg, lambda allowed: gradient_candidates(cfg.top_k, allowed))

    def plan(self, inputs: PlanInputs) -> Workload:
        """Queries and gradient passes of this stage, from the config (``harness plan``)."""
        return uat_workload(self.config, inputs, gradient=not self.is_control())


@hookimpl
def harness_attacks() -> list[type]:
    return [UniversalTriggerAttack]
