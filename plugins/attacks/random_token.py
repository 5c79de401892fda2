"""Attack plugin ``random_token``: the control that shows how much the gradient buys.

It runs the very loop of the attack it controls for, with the same options (documents, positions, number of steps,
candidates scored exactly per step, beam search), but its candidates are random allowed tokens instead of the
gradient's choice:

- ``hotflip: {...}``: each step scores ``beam_width`` random (context position, token) swaps exactly and keeps the
  best if it raises the loss (greedy random search over the same positions and flip budget);
- ``uat: {...}``: each iteration offers ``top_k`` random tokens per trigger position to the same beam search
  (random coordinate search for a trigger, like the published study's UAT), on the same optimisation split, judged
  on the same held-out split.

It spends the same number of exact evaluations as the attack, and no gradient passes. Give it the attack's options
under the attack's name (a YAML anchor keeps them identical)::

    hotflip: &hotflip {data: ..., flips: 4}
    random_hotflip: {plugin: random_token, hotflip: *hotflip}
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import model_validator

from harness import AttackPlugin, LoadedModel, MetricSpec, PlanInputs, PluginConfig, StageContext, Workload, hookimpl
from harness.attacks import ATTACK_METRICS, Scorer, attack_rng, random_allowed

from .hotflip import FLIP_METRICS, HotFlipConfig, Proposer, flip_workload, run_flip_attack
from .uat import UAT_METRICS, CandidateFn, UATConfig, run_uat, uat_workload


class RandomTokenConfig(PluginConfig):
    """Exactly one of: the options of the ``hotflip`` attack, or those of the ``uat`` attack."""

    hotflip: HotFlipConfig | None = None
    uat: UATConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> RandomTokenConfig:
        if (self.hotflip is None) == (self.uat is None):
            raise ValueError("give exactly one of `hotflip: {...}` or `uat: {...}` (the options of the attack this "
                             "control matches)")
        return self


def random_proposer(allowed: torch.Tensor, beam_width: int, gen: torch.Generator) -> Proposer:
    """``beam_width`` distinct untried swaps, uniform over (editable position, allowed token)."""
    allowed_ids = allowed.nonzero()[:, 0]

    def propose(ids: list[int], editable: list[int], tried: set[tuple[int, int]]):
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


def random_candidates(top_k: int, allowed: torch.Tensor, ctx: StageContext) -> CandidateFn:
    def candidates(scorer: Scorer, ids: torch.Tensor, n_scored: int, positions: list[int], trigger: list[int],
                   restart: int, iteration: int) -> torch.Tensor:
        gen = attack_rng(ctx, "random_token", "candidates", restart, iteration)
        return random_allowed(allowed, len(positions) * top_k, gen).view(len(positions), top_k)

    return candidates


class RandomTokenAttack(AttackPlugin[RandomTokenConfig]):
    """Control: the HotFlip or UAT loop with random candidate tokens (same budget, no gradient)."""

    name = "random_token"
    version = "3"  # FLOPs count the vocabulary projection where it runs; `screen:` (off by default)
    # v2: records and summary gain the budget (tokens, FLOPs) and, as the HotFlip control, the positions

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        if cfg.hotflip is not None:
            flip_cfg = cfg.hotflip
            return run_flip_attack(model, ctx, flip_cfg, lambda scorer, allowed, ex: random_proposer(
                allowed, flip_cfg.beam_width, attack_rng(ctx, "random_token", "swaps", ex.id)))
        uat_cfg = cfg.uat
        assert uat_cfg is not None
        return run_uat(model, ctx, uat_cfg, lambda allowed: random_candidates(uat_cfg.top_k, allowed, ctx))

    def is_control(self) -> bool:
        return True

    def reuse_config(self) -> dict[str, Any] | None:
        """HotFlip's loop with a stream keyed by the example: a change of ``n_examples`` keeps the records."""
        if self.config.hotflip is None:
            return None
        return self.config.model_dump(mode="json", exclude={"hotflip": {"n_examples"}})

    def declared_metrics(self) -> list[MetricSpec]:
        """The controlled attack's metrics (it runs that attack's loop and summary)."""
        return ATTACK_METRICS + (FLIP_METRICS if self.config.hotflip is not None else UAT_METRICS)

    def plan(self, inputs: PlanInputs) -> Workload:
        """The controlled attack's queries without its gradient passes (``harness plan``)."""
        cfg = self.config
        if cfg.hotflip is not None:
            return flip_workload(cfg.hotflip, inputs, gradient=False)
        assert cfg.uat is not None, "the config's validator requires hotflip or uat"
        return uat_workload(cfg.uat, inputs, gradient=False)


@hookimpl
def harness_attacks() -> list[type]:
    return [RandomTokenAttack]
