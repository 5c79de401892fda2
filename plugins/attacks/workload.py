"""What every attack's cost model (its ``plan``, read by ``harness plan``) shares: sequence lengths, the number of
examples a stage attacks, the size of a record. Each attack's own counts live beside its loop (``flip_workload`` in
:mod:`.hotflip`, ``uat_workload`` in :mod:`.uat`, ``transfer_workload`` in :mod:`.uat_transfer`); this module imports
none of them. Every sequence is ``[eos] + (trigger) + context + continuation`` tokens long.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import NoEstimate, PlanInputs

if TYPE_CHECKING:
    from harness.attacks import TaskConfig

#: Bytes of one per-example record (ids, token lists, texts) in records.jsonl, roughly.
RECORD_BYTES = 2000


def _length(cfg: TaskConfig, trigger: int = 0) -> int:
    return int(cfg.prefix_eos) + trigger + cfg.context_tokens + cfg.continuation_tokens


def _examples(inputs: PlanInputs, source, wanted: int | None, cfg: TaskConfig, where: str) -> tuple[int, str]:
    docs = inputs.documents(source)
    need = cfg.context_tokens + cfg.continuation_tokens
    n = docs.documents if wanted is None else min(wanted, docs.documents)
    note = ""
    if docs.tokens_per_document < need:
        note = (f"; {where}: documents average {docs.tokens_per_document:,.0f} tokens, fewer than the {need} an example "
                "needs (short ones are skipped: fewer examples)")
    if n == 0:
        raise NoEstimate(f"{where}: no documents")
    return n, note
