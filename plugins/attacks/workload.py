"""What an attack stage costs, from its config alone (the attacks' ``plan``, read by ``harness plan``).

Counts follow the loops in :mod:`.hotflip` and :mod:`.uat` and are upper bounds where the loop may stop early:
every HotFlip step is assumed to run (one gradient pass and ``beam_width`` exact scores), and every UAT beam to
expand fully. Every sequence is ``[eos] + (trigger) + context + continuation`` tokens long.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness import Batch, NoEstimate, PlanInputs, Workload

from .uat import EVAL_CHUNK

if TYPE_CHECKING:
    from harness.attacks import TaskConfig
    from .hotflip import HotFlipConfig
    from .uat import UATConfig

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


def flip_workload(cfg: HotFlipConfig, inputs: PlanInputs, gradient: bool) -> Workload:
    """HotFlip (``gradient``) or its random control: per example, ``steps`` x (a gradient pass + beam_width scores)."""
    from .hotflip import n_flips

    n, note = _examples(inputs, cfg.data, cfg.n_examples, cfg, "data")
    length = _length(cfg)
    steps = n_flips(cfg.flips, cfg.context_tokens)
    scored = n * (1 + steps * cfg.beam_width)
    grads = n * steps if gradient else 0
    rows = max(1, min(cfg.beam_width, cfg.batch_tokens // length))
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


def uat_workload(cfg: UATConfig, inputs: PlanInputs, gradient: bool) -> Workload:
    """UAT (``gradient``) or its random control: restarts x iterations of candidates + beam search, then held-out."""
    n_opt, note_opt = _examples(inputs, cfg.opt_data, cfg.n_opt, cfg, "opt_data")
    n_eval, note_eval = _examples(inputs, cfg.eval_data, cfg.n_eval, cfg, "eval_data")
    length = _length(cfg, cfg.trigger_length)
    batch = min(cfg.batch_size, n_opt)
    # Beam search: the current trigger, then per position the new candidates of every beam (one beam at first).
    candidates = 1 + cfg.top_k + (cfg.trigger_length - 1) * cfg.beam_size * cfg.top_k
    iterations = cfg.restarts * cfg.iterations
    scored = iterations * batch * candidates + cfg.restarts * n_opt + 2 * n_opt + 2 * n_eval
    grads = iterations * batch if gradient else 0
    # The largest scoring call: one beam-search position (every beam's candidates on the batch), the whole
    # optimisation split (a restart's final score), or a chunk of held-out examples; batch_tokens caps it.
    largest = max(batch * cfg.beam_size * cfg.top_k, n_opt, min(EVAL_CHUNK, n_eval))
    rows = max(1, min(cfg.batch_tokens // length, largest))
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


def transfer_workload(cfg, inputs: PlanInputs) -> Workload:
    """``uat_transfer``: every source trigger (a ``uat`` stage it needs) on its held-out split, with and without it."""
    from pydantic import ValidationError

    from .uat_transfer import source_uat_config

    tokens = queries = 0
    batches, notes = [], []
    for _, dep in sorted(inputs.dependencies.items()):
        try:
            src = source_uat_config(dep)  # as the stage reads its input's config at run time
        except ValidationError:
            continue  # not a trigger (e.g. the training stage of the model)
        n, note = _examples(inputs, cfg.eval_data or src.eval_data, cfg.n_eval or src.n_eval, src, "eval_data")
        plain, triggered = _length(src), _length(src, src.trigger_length)
        tokens += n * (plain + triggered)
        queries += 2 * n
        batches.append(Batch(max(1, min(cfg.batch_tokens // triggered, EVAL_CHUNK, n)), triggered,
                             logit_positions=src.continuation_tokens + 1, label="exact scoring"))
        source = f"{dep['stage']['entry']} of {dep['stage']['model']}"
        notes.append(f"{source}: {n:,} held-out examples x 2 (with and without its trigger){note}")
    if not batches:
        raise NoEstimate("no uat stage among the stages it needs (`needs: [<uat entry>]`)")
    return Workload(forward_tokens=tokens, context=max(b.seq_len for b in batches), queries=queries,
                    batches=batches[:1], disk_bytes=queries / 2 * RECORD_BYTES, disk_note="per-example records",
                    notes=[f"{len(batches)} source trigger(s): " + "; ".join(notes)])
