"""Probe sampling (Zhao et al. 2024, arXiv 2403.01251): a cheap draft of the model ranks every candidate, the model
itself scores exactly a probe set spread over the draft's ranking, and the draft/model agreement on the probe decides
how many more of the draft's best the model scores. The candidate an attack keeps is always one the model scored.

The draft shares the tokenizer by construction: a copy of the model keeping some of its transformer blocks
(``harness.scoring.draft_model``), in bf16 where the hardware runs bf16 natively. ``draft_layers: null`` keeps every
block: a pure low-precision screen, which may skip the probe (``probe_factor: null``) and rescore only the draft's
best few exactly. The probe set is chosen from the draft's ranking (evenly spaced ranks, the draft's
best first), with no random draw: a search resumed from a checkpoint chooses exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from .config import PluginConfig


class ScreenConfig(PluginConfig):
    """An approximate candidate screen (probe sampling): fewer exact scores per step, the kept candidate exact."""

    #: Transformer blocks the draft keeps (indices; negative ones count from the end), or an int ``n``: the first
    #: ``ceil(n/2)`` and the last ``floor(n/2)`` blocks; None: every block (a low-precision screen only).
    draft_layers: int | list[int] | None = None
    #: The draft's dtype: bfloat16 (native on GPUs and on CPUs with avx512_bf16 or AMX), or float32.
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    #: Probe set: ``ceil(candidates / probe_factor)`` candidates (at least 2) scored by both (nanoGCG: 16). None: no
    #: probe, the draft's best ``min_exact`` are scored exactly (a rescore: for a draft that keeps every block in low
    #: precision, whose ranking agrees with the model's up to rounding, the probe would only spend a pass to say so).
    probe_factor: int | None = Field(default=16, ge=1)
    #: Then the draft's best ``ceil((1 - agreement) x candidates / r)`` more are scored exactly (nanoGCG: 8).
    r: float = Field(default=8.0, gt=0)
    #: At least this many of the draft's best are scored exactly beyond the probe set.
    min_exact: int = Field(default=1, ge=0)
    #: Also score every candidate exactly to count how often the screen's choice differs from the exact best
    #: (a measurement: it costs the full scoring, counted in the budget).
    audit: bool = False

    def layer_indices(self, n_layers: int) -> list[int] | None:
        """The draft's blocks of an ``n_layers``-block model (None: all, in the model's own precision rules)."""
        if self.draft_layers is None:
            return None
        if isinstance(self.draft_layers, int):
            n = min(self.draft_layers, n_layers)
            return list(range(math.ceil(n / 2))) + list(range(n_layers - n // 2, n_layers))
        return [i % n_layers for i in self.draft_layers]


    def cost_in_candidates(self, n: int, n_layers: int) -> float:
        """What screening ``n`` candidates costs, in exact candidate scores (``harness plan``): the draft's pass over
        all ``n`` at its share of the blocks, plus the exact scores at agreement 0 (measured near 0 on SmolLM2 for
        truncated drafts), plus all ``n`` again with ``audit``. Counts the blocks only: the vocabulary projection
        runs at a few positions per candidate either way."""
        if n <= 1:
            return float(n)
        layers = self.layer_indices(n_layers)
        share = 1.0 if layers is None or not n_layers else len(layers) / n_layers
        if self.probe_factor is None:
            exact = min(n, max(1, self.min_exact))
        else:
            probe = min(n, max(2, math.ceil(n / self.probe_factor)))
            exact = min(n, probe + max(self.min_exact, math.ceil(n / self.r)))
        return n * share + exact + (n if self.audit else 0)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two score vectors (ranks by stable sort; 0 for fewer than 2 entries)."""
    n = len(a)
    if n < 2:
        return 0.0
    ra = torch.argsort(torch.argsort(a, stable=True), stable=True).double()
    rb = torch.argsort(torch.argsort(b, stable=True), stable=True).double()
    return float(1 - 6 * ((ra - rb) ** 2).sum() / (n * (n * n - 1)))


#: Scores rows of candidates (their indices) with the model or its draft: ``(rows, draft) -> scores [len(rows)]``.
RowScorer = Callable[[torch.Tensor, bool], torch.Tensor]


def probe_sample(score: RowScorer, n_groups: int, group: int, select: Literal["min", "max"], cfg: ScreenConfig,
                 stats: dict[str, float] | None = None) -> torch.Tensor:
    """Scores of ``n_groups`` candidates (each ``group`` consecutive rows, averaged), exact for the candidates the
    model scored and the worst value (+inf for ``select='min'``, -inf for ``'max'``) for the others, per row.

    ``stats`` (when given) accumulates: ``calls``, ``exact`` (candidates the model scored), ``candidates``,
    ``agreement`` (sum of the probe's Spearman correlations), ``probes`` (calls that had a probe set) and, with
    ``cfg.audit``, ``misses`` (choices other than the exact best) and ``regret`` (the exact best's score minus the
    chosen one's, in its favour's direction).
    """
    sign = 1.0 if select == "min" else -1.0
    rows_of = (lambda g: (g[:, None] * group + torch.arange(group)[None]).flatten())

    def means(groups: torch.Tensor, draft: bool) -> torch.Tensor:
        return score(rows_of(groups), draft).view(len(groups), group).mean(1)

    everything = torch.arange(n_groups)
    draft = sign * means(everything, True)  # minimise
    order = torch.argsort(draft, stable=True)
    exact = torch.full((n_groups,), math.inf, dtype=torch.float64)
    agreement: float | None = None
    if cfg.probe_factor is None:  # a rescore: the draft's best, scored exactly in one call (no agreement measured)
        probe = order[:0]
        more = max(1, cfg.min_exact)
    else:
        n_probe = min(n_groups, max(2, math.ceil(n_groups / cfg.probe_factor)))
        probe = order[torch.linspace(0, n_groups - 1, n_probe).round().long().unique()]
        exact[probe] = sign * means(probe, False).double()
        agreement = spearman(draft[probe], exact[probe])
        more = max(cfg.min_exact, math.ceil((1 - agreement) * n_groups / cfg.r))
    rest = order[~torch.isin(order, probe)][:more]
    if len(rest):
        exact[rest] = sign * means(rest, False).double()
    if stats is not None:
        stats["calls"] = stats.get("calls", 0) + 1
        stats["candidates"] = stats.get("candidates", 0) + n_groups
        stats["exact"] = stats.get("exact", 0) + len(probe) + len(rest)
        if agreement is not None:
            stats["agreement"] = stats.get("agreement", 0.0) + agreement
            stats["probes"] = stats.get("probes", 0) + 1
        if cfg.audit:
            full = sign * means(everything, False).double()
            chosen = int(exact.argmin())
            # a miss: a worse score than the exact best (beyond the rounding of scoring in other batches)
            worse = float(full[chosen] - full.min()) > 1e-6 * (1 + abs(float(full.min())))
            stats["misses"] = stats.get("misses", 0) + int(worse)
            stats["regret"] = stats.get("regret", 0.0) + float(full[chosen] - full.min())
    return (sign * exact).repeat_interleave(group)
