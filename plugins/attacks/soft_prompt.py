"""Attack plugin ``soft_prompt``: attacks in embedding space, beside the token attacks.

The token attacks (HotFlip, UAT, GCG) search a discrete set; this attack drops the constraint that an input be a
token and optimises the input **embeddings** directly, by gradient. What that measures depends on ``edit``:

- ``context`` with ``epsilon: null`` is the **continuous relaxation** of the token attacks on their own positions:
  every token edit of those positions is a point of the set it searches, so the optimum there bounds the token
  attacks' from above. A finite run of Adam reaches a lower bound on that optimum, not the optimum: it is evidence,
  read with its loss curve (flattened or not), never a certificate.
- ``suffix`` / ``prefix`` add new free embeddings to the input (Schwinn et al. 2024, "Soft prompt threats"):
  another threat model (more positions, off the vocabulary), reported beside the token attacks, not a bound on them.

If even the relaxation fails on a model, either the model resists on those positions or its gradients mislead the
search (a report's gradient-masking check flags it: ``report.masking.relaxation``); if only the token attacks fail,
they may be too weak.

Threat models (``edit``), on the examples HotFlip attacks (the same documents and selection):

- ``suffix`` / ``prefix``: ``n_tokens`` free embeddings placed after / before the context (initialised from allowed
  tokens' embeddings drawn by the suite's seed), unbounded;
- ``context``: a perturbation of the context tokens' embeddings, each token's within an L2 or L-infinity ball of
  radius ``epsilon`` x the mean norm (in that norm) of the allowed tokens' embeddings; ``epsilon: null`` leaves it
  unbounded: the **continuous relaxation** of the token attacks on their own positions (HotFlip's and GCG's context
  tokens, the same documents), which a report's gradient-masking check expects to succeed.

``restarts``: the optimisation runs again from another start (restart 0 from the usual start; restart ``r`` from
random allowed tokens drawn by (seed, example, r), or a random perturbation of the embeddings' RMS size), keeping
each example's best over all. Every record keeps its loss curve (``loss_curve``: the NLL at every step of every
restart) and the best NLL after each step (``nll_by_step``), so one can see that the curve has flattened.

Objectives: ``untargeted`` raises the continuation NLL (the shared task, records and summary of
:mod:`harness.attacks`, so it lands in the same tables as the token attacks); ``targeted`` lowers the NLL of a fixed
``target`` text put in place of the continuation and reports whether the model's greedy continuation is exactly the
target (teacher-forced argmax at every target position: the same test, without decoding).

Each step, for a chunk of examples at once (their losses are summed, so each example's gradient is its own):

1. one forward + backward pass gives the loss and its gradient w.r.t. the free embeddings (or the perturbation);
2. the loss of every example is compared with its best so far (the best embeddings are kept, as the reported result);
3. ``pgd``: a step of ``lr`` x the embeddings' RMS coordinate in the direction of the gradient's sign; ``adam``: an
   Adam step of that learning rate; ``context`` then projects back onto the ball.

After the last step the final embeddings are scored too. The state (embeddings, best embeddings, optimiser state,
step, budget) of the chunk in progress is saved atomically every ``save_every`` steps and when it is finished, so a
killed or preempted stage resumes to the same numbers.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from harness import (RECORD_BYTES, AttackPlugin, Batch, DocumentSource, HarnessError, LoadedModel, MetricSpec,
                     PlanInputs, StageContext, StagePreempted, Workload, atomic_write_bytes, hookimpl, load_documents,
                     planned_examples)
from harness.attacks import (ATTACK_METRICS, PROGRESS_FIELD, Budget, Example, Scorer, TaskConfig, allowed_tokens,
                             attack_rng, attack_summary, best_so_far, example_record, make_examples, random_allowed,
                             select_examples)
from harness.loop import run_chunks

from . import SUCCESS_THRESHOLD


class SoftPromptConfig(TaskConfig):
    limit_fields = ("n_examples",)  # `harness run --limit N` caps these
    #: Success: the continuation NLL raised by more than this fraction (the built-in attacks' shared choice).
    threshold: float = Field(default=SUCCESS_THRESHOLD, ge=0)
    #: The documents attacked, one by one.
    data: DocumentSource
    #: Examples to attack (the first usable documents, or a seeded sample: HotFlip's with the same options).
    n_examples: int | None = Field(default=None, ge=1)
    #: Which ``n_examples``: the first usable documents, or a sample seeded by the suite's seed.
    sample: Literal["first", "seeded"] = "first"
    #: Where the adversary acts: free embeddings after / before the context, or a bounded perturbation of it.
    edit: Literal["suffix", "prefix", "context"] = "suffix"
    #: Free embeddings (``suffix`` / ``prefix``).
    n_tokens: int = Field(default=20, ge=1)
    #: The ball of each context token's perturbation (``context``), radius ``epsilon`` x the mean norm of the allowed
    #: tokens' embeddings in that norm.
    norm: Literal["l2", "linf"] = "l2"
    #: None: unbounded (the continuous relaxation of the token attacks on the same positions).
    epsilon: float | None = Field(default=0.5, gt=0)
    #: Optimisations per example from different starts (each ``steps`` long), the best kept.
    restarts: int = Field(default=1, ge=1)
    #: Adam, or signed-gradient steps (PGD); with ``edit: context`` either is projected back onto the ball.
    optimizer: Literal["pgd", "adam"] = "adam"
    #: Adam's learning rate, or PGD's step, in units of the embeddings' RMS coordinate.
    lr: float = Field(default=0.1, gt=0)
    #: Optimisation steps per restart (each a forward and backward pass; the record keeps the loss curve).
    steps: int = Field(default=100, ge=1)
    #: Untargeted: raise the continuation's NLL; targeted: lower the NLL of ``target``.
    objective: Literal["untargeted", "targeted"] = "untargeted"
    #: The text the model should continue with (``targeted``), in place of the document's continuation.
    target: str | None = None
    #: Examples optimised together (their passes batched; each keeps its own embeddings and optimiser state).
    batch_size: int = Field(default=8, ge=1)
    #: Steps between two saves of the state of the chunk in progress.
    save_every: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _target_iff_targeted(self) -> SoftPromptConfig:
        if self.objective == "targeted" and not self.target:
            raise ValueError("objective `targeted` needs `target: <text>` (what the model should continue with)")
        if self.objective == "untargeted" and self.target is not None:
            raise ValueError("`target` is only read by objective `targeted`; remove it or set `objective: targeted`")
        return self


@dataclass
class Geometry:
    """The size of the model's embeddings, in which the step and the ball are measured."""

    scale: float  # RMS coordinate of the allowed tokens' embeddings: the unit of ``lr``
    radius: float  # ``context``: the perturbation's bound per token


def geometry(scorer: Scorer, allowed: torch.Tensor, cfg: SoftPromptConfig) -> Geometry:
    emb = scorer.embeddings[allowed].float()
    norms = emb.norm(dim=1) if cfg.norm == "l2" else emb.abs().amax(dim=1)
    radius = math.inf if cfg.epsilon is None else cfg.epsilon * float(norms.mean())
    return Geometry(scale=float(emb.pow(2).mean().sqrt()), radius=radius)


def project(delta: torch.Tensor, norm: str, radius: float) -> torch.Tensor:
    """``delta`` ``[B, C, d]`` with each token's row moved onto the ``norm`` ball of ``radius`` (in place)."""
    if math.isinf(radius):
        return delta
    with torch.no_grad():
        if norm == "linf":
            delta.clamp_(-radius, radius)
        else:
            factor = (radius / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
            delta.mul_(factor)
    return delta


def scored_tokens(ex: Example, target: list[int] | None) -> list[int]:
    """What the loss scores after the adversary's input: the document's continuation, or the target."""
    return list(ex.continuation) if target is None else target


def assemble(scorer: Scorer, chunk: list[Example], params: torch.Tensor, cfg: SoftPromptConfig,
             target: list[int] | None) -> torch.Tensor:
    """Input embeddings ``[B, T, d]``: prefix, then free embeddings and context (or the perturbed context), then the
    scored tokens."""
    emb = scorer.embeddings
    device = emb.device
    prefix = emb[torch.tensor([list(ex.prefix) for ex in chunk], dtype=torch.long, device=device)]
    context = emb[torch.tensor([list(ex.context) for ex in chunk], device=device)]
    scored = emb[torch.tensor([scored_tokens(ex, target) for ex in chunk], device=device)]
    params = params.to(emb.dtype)
    if cfg.edit == "context":
        return torch.cat([prefix, context + params, scored], dim=1)
    if cfg.edit == "prefix":
        return torch.cat([prefix, params, context, scored], dim=1)
    return torch.cat([prefix, context, params, scored], dim=1)


def continuation_loss(scorer: Scorer, embeds: torch.Tensor, labels: torch.Tensor,
                      backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean NLL of ``labels`` ``[B, k]`` (the last ``k`` inputs) and whether the argmax predicts every one."""
    k = labels.shape[1]
    logits = scorer.embeds_logits(embeds, k + 1, backward=backward)[:, :-1].float()
    nll = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none").mean(1)
    return nll, (logits.argmax(-1) == labels).all(1)


def init_params(scorer: Scorer, chunk: list[Example], allowed: torch.Tensor, cfg: SoftPromptConfig,
                ctx: StageContext, geo: Geometry, restart: int = 0) -> torch.Tensor:
    """Free embeddings of allowed tokens drawn by the seed and the example (the same for every model at a seed), or
    a zero perturbation; a later restart draws other tokens, or a random perturbation of the embeddings' RMS size
    (by seed, example and restart)."""
    emb = scorer.embeddings
    key = () if restart == 0 else (restart,)
    if cfg.edit == "context":
        shape = (len(chunk[0].context), emb.shape[1])
        if restart == 0:
            return torch.zeros(len(chunk), *shape, dtype=torch.float32, device=emb.device)
        noise = torch.stack([torch.randn(shape, generator=attack_rng(ctx, "soft_prompt", "init", ex.id, *key))
                             for ex in chunk])
        return project((noise * geo.scale).to(emb.device), cfg.norm, geo.radius)
    ids = [random_allowed(allowed, cfg.n_tokens, attack_rng(ctx, "soft_prompt", "init", ex.id, *key)) for ex in chunk]
    return emb[torch.stack(ids).to(emb.device)].float()


def state_path(ctx: StageContext, first: int) -> Path:
    return ctx.stage_dir / f"state-soft_prompt-{first}.pt"


def save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def optimise_chunk(scorer: Scorer, chunk: list[Example], allowed: torch.Tensor, geo: Geometry, cfg: SoftPromptConfig,
                   target: list[int] | None, ctx: StageContext, path: Path) -> dict[str, Any]:
    """``restarts`` x ``steps`` of gradient ascent (untargeted) or descent (targeted) on the chunk's embeddings,
    resuming from the state at ``path``; returns each example's best result and its loss curve (``curve``: NLL per
    restart and step); what the chunk spent is in ``scorer.budget``. Checkpoints inside the chunk (the core's loop's
    lower-level door: it saves its state, then raises StagePreempted itself)."""
    sign = -1.0 if cfg.objective == "untargeted" else 1.0  # minimise sign x NLL
    device = scorer.embeddings.device
    labels = torch.tensor([scored_tokens(ex, target) for ex in chunk], device=device)
    params = init_params(scorer, chunk, allowed, cfg, ctx, geo).requires_grad_(True)
    adam = torch.optim.Adam([params], lr=cfg.lr * geo.scale) if cfg.optimizer == "adam" else None
    n = len(chunk)
    state: dict[str, Any]
    if path.exists():
        state = torch.load(path, weights_only=True)
        if state.get("restart", 0):
            with torch.no_grad():  # a restart's own start (the saved params follow; Adam's state is its own)
                params.copy_(init_params(scorer, chunk, allowed, cfg, ctx, geo, state["restart"]))
        with torch.no_grad():
            params.copy_(state.pop("params"))
        if adam is not None:
            adam.load_state_dict(state.pop("adam"))
        scorer.budget = Budget(**state.pop("budget"))
    else:
        # The unedited example's NLL of what is scored (the document's continuation or the target).
        before = scorer.nll(torch.tensor([[*ex.prefix, *ex.context, *scored_tokens(ex, target)] for ex in chunk]),
                            labels.shape[1])
        state = {"step": 0, "nll_before": before, "best_loss": torch.full((n,), math.inf, dtype=torch.float64),
                 "best_nll": torch.zeros(n, dtype=torch.float64), "best_match": torch.zeros(n, dtype=torch.bool),
                 "first_success": torch.full((n,), -1), "best_params": params.detach().clone(), "restart": 0,
                 "curve": torch.full((cfg.restarts, cfg.steps + 1, n), math.nan, dtype=torch.float64)}

    def checkpoint() -> None:
        save_state(path, {**state, "params": params.detach(), "budget": scorer.budget.state(),
                          **({"adam": adam.state_dict()} if adam is not None else {})})

    def keep_best(step: int, nll: torch.Tensor, match: torch.Tensor) -> None:
        """Keep each example's best embeddings; note the first step (counted over the restarts) that reached its
        goal; add the step to the loss curve."""
        nll, match = nll.detach().double().cpu(), match.cpu()
        state["curve"][state["restart"], step] = nll
        step += state["restart"] * cfg.steps
        better = sign * nll < state["best_loss"]
        state["best_loss"] = torch.where(better, sign * nll, state["best_loss"])
        state["best_nll"] = torch.where(better, nll, state["best_nll"])
        state["best_match"] = torch.where(better, match, state["best_match"])
        state["best_params"][better.to(device)] = params.detach()[better.to(device)]
        goal = match if target is not None else nll > state["nll_before"] * (1 + cfg.threshold)
        state["first_success"] = torch.where((state["first_success"] < 0) & goal, step, state["first_success"])

    while True:
        while state["step"] < cfg.steps:
            if ctx.should_stop:
                checkpoint()
                raise StagePreempted(ctx.stage.id)
            step = state["step"]
            with torch.enable_grad():
                nll, match = continuation_loss(scorer, assemble(scorer, chunk, params, cfg, target), labels, True)
                (grad,) = torch.autograd.grad(sign * nll.sum(), params)  # each example's own gradient: a sum of losses
            keep_best(step, nll, match)
            with torch.no_grad():
                if adam is None:
                    params.sub_(cfg.lr * geo.scale * grad.sign())
                else:
                    params.grad = grad
                    adam.step()
                if cfg.edit == "context":
                    project(params, cfg.norm, geo.radius)
            state["step"] = step + 1
            if state["step"] % cfg.save_every == 0:
                checkpoint()
        if not state.get("finished"):
            with torch.no_grad():  # the embeddings after the last step
                nll, match = continuation_loss(scorer, assemble(scorer, chunk, params, cfg, target), labels, False)
            keep_best(cfg.steps, nll, match)
            state["finished"] = True
            checkpoint()  # the restart's result (the best embeddings), kept until the chunk's records are written
        if state["restart"] + 1 >= cfg.restarts:
            return state
        state.update(restart=state["restart"] + 1, step=0, finished=False)  # the next start, a fresh optimiser
        with torch.no_grad():
            params.copy_(init_params(scorer, chunk, allowed, cfg, ctx, geo, state["restart"]))
        if adam is not None:
            adam = torch.optim.Adam([params], lr=cfg.lr * geo.scale)
        checkpoint()


def soft_prompt_summary(records: list[dict[str, Any]], cfg: SoftPromptConfig) -> dict[str, Any]:
    """What does not follow from a declaration (the core computes the rest from the records)."""
    steps = [r["steps_to_success"] for r in records if r["steps_to_success"] is not None]
    extra = {"median_steps_to_success": float(np.median(steps)) if steps else None}
    if cfg.objective == "untargeted":
        return {**attack_summary(records, cfg.threshold), **extra}
    return {"n_examples": len(records), **extra}


STEPS_METRIC = MetricSpec("median_steps_to_success", "Steps to success (median)", aggregation="none", digits=0,
                          show=False)
TARGETED_METRICS = [
    MetricSpec("exact_match_rate", "Exact match (%)", field="exact_match", scale=100, digits=1),
    MetricSpec("mean_target_nll", "Target NLL", field="target_nll"),
    MetricSpec("mean_target_nll_before", "Target NLL before", field="target_nll_before", show=False),
    MetricSpec("n_examples", "Examples", aggregation="none", digits=0, show=False),
]


class SoftPromptAttack(AttackPlugin[SoftPromptConfig]):
    """Soft-prompt / embedding-perturbation attack: free embeddings (a threat model of its own) or the continuous
    relaxation of the token attacks on their positions."""

    name = "soft_prompt"
    version = "2"  # FLOPs count the vocabulary projection where it runs

    def declared_metrics(self) -> list[MetricSpec]:
        cfg = self.config
        if cfg.objective == "untargeted":
            return [*ATTACK_METRICS, STEPS_METRIC]
        return [*TARGETED_METRICS, *(m for m in ATTACK_METRICS if m.budget), STEPS_METRIC]

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        where = f"attacks.{ctx.stage.entry}"
        examples = make_examples(load_documents(cfg.data), model, cfg, where=f"{where}.data")
        examples = select_examples(examples, cfg.n_examples, cfg.sample, ctx)
        tok = model.tokenizer
        target = None
        if cfg.objective == "targeted":
            assert cfg.target is not None
            target = tok(cfg.target, add_special_tokens=False)["input_ids"]
            if not target:
                raise HarnessError(f"{where}.target: encodes to no token; fix: give a non-empty text")
        extra = cfg.n_tokens if cfg.edit != "context" else 0
        length = int(cfg.prefix_eos) + extra + cfg.context_tokens + len(target or examples[0].continuation)
        if length > model.max_length:
            raise HarnessError(f"{where}: the attacked sequence has {length} positions, more than the "
                               f"{model.max_length} of model '{model.name}'; fix: shorten n_tokens, context_tokens, "
                               "continuation_tokens or target")
        allowed = allowed_tokens(model, cfg.vocab)
        scorer = Scorer(model, cfg.batch_tokens)
        geo = geometry(scorer, allowed, cfg)
        first = {ex.id: i for i, ex in enumerate(examples)}

        def attack_chunk(chunk: list[Example]) -> list[dict[str, Any]]:
            out = optimise_chunk(scorer, chunk, allowed, geo, cfg, target, ctx, state_path(ctx, first[chunk[0].id]))
            records = []
            for i, ex in enumerate(chunk):
                first_success = int(out["first_success"][i])
                curve = out["curve"][:, :, i]  # [restarts, steps + 1]: the NLL at every step of every restart
                # The mean L2 norm per token of the free embeddings, or of the context's perturbation.
                fields = {"steps": cfg.steps, "restarts": cfg.restarts, "edit": cfg.edit,
                          "loss_curve": curve.tolist(),
                          "steps_to_success": first_success if first_success >= 0 else None,
                          "adversary_norm": float(out["best_params"][i].norm(dim=-1).mean())}
                if target is None:
                    fields[PROGRESS_FIELD] = best_so_far(float(out["nll_before"][i]), curve.flatten().tolist())
                    records.append(example_record(ex.id, float(out["nll_before"][i]), float(out["best_nll"][i]),
                                                  cfg.threshold, **fields))
                else:
                    records.append({"id": ex.id, "target_nll_before": float(out["nll_before"][i]),
                                    "target_nll": float(out["best_nll"][i]),
                                    "exact_match": bool(out["best_match"][i]), **fields})
            return records

        records = run_chunks(ctx, examples, cfg.batch_size, attack_chunk, scorer=scorer)
        return soft_prompt_summary(records, cfg)

    def plan(self, inputs: PlanInputs) -> Workload:
        """Per example: one exact score of the unedited example, then per restart ``steps`` forward + backward
        passes and one last forward pass of the adversarial embeddings (``harness plan``)."""
        cfg = self.config
        n, note = planned_examples(inputs, cfg.data, cfg.n_examples, cfg, "data")
        scored = (cfg.continuation_tokens if cfg.target is None
                  else max(1, round(len(cfg.target) / inputs.chars_per_token)))  # the target's tokens, estimated
        plain = int(cfg.prefix_eos) + cfg.context_tokens + scored
        length = plain + (cfg.n_tokens if cfg.edit != "context" else 0)
        rows = min(cfg.batch_size, n)
        chunks = -(-n // cfg.batch_size)
        steps, r = cfg.steps * cfg.restarts, cfg.restarts
        return Workload(forward_tokens=n * (plain + r * length), gradient_tokens=n * steps * length, context=length,
                        queries=n * (1 + r + steps), forward_calls=(1 + r) * chunks, gradient_calls=chunks * steps,
                        batches=[Batch(rows, length, "inputs", logit_positions=scored + 1, label="embedding gradients"),
                                 Batch(rows, plain, logit_positions=scored + 1, label="exact scoring")],
                        disk_bytes=n * RECORD_BYTES, disk_note="per-example records and optimiser states",
                        notes=[f"{n:,} examples x {r} restart(s) x {cfg.steps} steps of {length} tokens, {rows} "
                               f"examples at once{note}"])


@hookimpl
def harness_attacks() -> list[type]:
    return [SoftPromptAttack]
