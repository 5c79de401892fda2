"""Attack plugin ``edit_transfer``: another model's per-example adversarial edits replayed on this model.

Used with ``needs: [<an attack that edits the context>]`` (``hotflip``, ``gcg`` with ``edit: context``) and
``from_model: <model>`` (the suite's baseline, say): its stage for model B receives the results of that attack's
stages of every model at the seed, reads the records of ``from_model``'s stage, and scores each of its edited
contexts on B, on the same examples (the source stage's documents and task options, read from its stored config).
That is the transfer attack of a gradient-masking check (Athalye et al. 2018; Carlini et al. 2019): an attack
crafted on another model must not beat the white-box attack on this one; if it does, this model's gradients
mislead its own attack.

A record's edited context is its ``adversarial_ids`` when they are the whole context (GCG), else the context with
``new_tokens`` put at ``positions`` (HotFlip). Token ids are replayed as they are, so both models must share the
vocabulary: an example whose context this model tokenizes differently is refused with one line.

Metrics: the shared attack metrics (``ATTACK_METRICS``, computed by the core from the records) of the replayed
edits; each record names the source model (``source``, as ``uat_transfer``'s) and stage. The per-example loop is the
core's (:func:`harness.loop.run_examples`).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from harness import (RECORD_BYTES, AttackPlugin, Batch, DocumentSource, HarnessError, LoadedModel, MetricSpec,
                     NoEstimate, PlanInputs, PluginConfig, StageContext, Workload, load_documents, sequence_length)
from harness.attacks import (ATTACK_METRICS, Example, Scorer, TaskConfig, attack_progress, attack_summary,
                             example_record, make_examples)
from harness.loop import run_examples


class EditTransferConfig(PluginConfig):
    #: The model whose adversarial edits are replayed (one of the suite's models, e.g. the baseline).
    from_model: str
    #: Tokens per forward pass when scoring the replayed edits (batch size x length): the memory budget.
    batch_tokens: int = Field(default=16384, ge=64)


class EditSource(TaskConfig):
    """What a replay needs of the source stage's config: its documents and task options."""

    data: DocumentSource


def source_config(result: dict[str, Any]) -> EditSource:
    config = result.get("config") or {}
    return EditSource.model_validate({k: v for k, v in config.items() if k in EditSource.model_fields})


def edited_context(record: dict[str, Any], ex: Example) -> list[int]:
    """The source record's edited context (see the module's docstring)."""
    ids = record.get("adversarial_ids")
    if isinstance(ids, list) and len(ids) == len(ex.context):
        return [int(t) for t in ids]
    context = list(ex.context)
    for pos, tok in zip(record.get("positions") or [], record.get("new_tokens") or []):
        context[int(pos)] = int(tok)
    return context


def source_stage(ctx: StageContext, from_model: str) -> tuple[str, dict[str, Any]]:
    """The one stage it needs that attacked ``from_model``."""
    where = f"attacks.{ctx.stage.entry}"
    found = [(sid, r) for sid, r in sorted(ctx.inputs.items())
             if (r.get("stage") or {}).get("section") == "attacks" and r["stage"].get("model") == from_model]
    if not found:
        needed = ", ".join(ctx.inputs) or "none"
        raise HarnessError(f"{where}: no stage of model '{from_model}' among the stages it needs ({needed}); fix: add "
                           "`needs: [<the attack to replay>]` and set `from_model:` to a model that attack runs on")
    if len(found) > 1:
        raise HarnessError(f"{where}: several attacks of model '{from_model}' among the stages it needs "
                           f"({', '.join(sid for sid, _ in found)}); fix: one entry per replayed attack, each with "
                           "`needs: [<that attack>]`")
    return found[0]


class EditTransferAttack(AttackPlugin[EditTransferConfig]):
    """Replays another model's per-example adversarial edits (e.g. the baseline's HotFlip edits) on this model."""

    name = "edit_transfer"

    def declared_metrics(self) -> list[MetricSpec]:
        return list(ATTACK_METRICS)

    def result_fields(self) -> dict[str, Any]:
        """``transfer_from``: the model whose edits this replays (the report's gradient-masking check reads it)."""
        return {**super().result_fields(), "transfer_from": self.config.from_model}

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        where = f"attacks.{ctx.stage.entry}"
        sid, result = source_stage(ctx, cfg.from_model)
        src = source_config(result)
        examples = {ex.id: ex for ex in make_examples(load_documents(src.data), model, src, where=f"{where} ({sid})")}
        tok = model.tokenizer
        scorer = Scorer(model, cfg.batch_tokens)
        source_records = {record.get("id"): record for record in ctx.input_records(sid)}
        for example_id, record in source_records.items():  # every source example checked before any is scored
            ex = examples.get(example_id)
            if ex is None or ("original_text" in record and tok.decode(list(ex.context)) != record["original_text"]):
                raise HarnessError(f"{where}: example {example_id} of {sid} has another context on model "
                                   f"'{model.name}' (another tokenizer?); fix: replay edits only between models "
                                   "that share a vocabulary")

        def replay(ex: Example) -> dict[str, Any]:
            context = edited_context(source_records[ex.id], ex)
            before, after = scorer.nll(torch.tensor([ex.ids(), ex.ids(context)]), len(ex.continuation)).tolist()
            return example_record(
                ex.id, before, after, src.threshold, source=cfg.from_model, source_stage=sid,
                positions=[i for i, (a, b) in enumerate(zip(ex.context, context)) if a != b],
                adversarial_ids=context, adversarial_text=tok.decode(context))

        records = run_examples(ctx, [examples[i] for i in source_records], replay, scorer=scorer,
                               label="replayed examples", show=attack_progress)
        return {**attack_summary(records, src.threshold), "source_model": cfg.from_model, "source_stage": sid}

    def plan(self, inputs: PlanInputs) -> Workload:
        """Two exact scores per replayed example (with and without the edits), ``harness plan``."""
        for dep in inputs.dependencies.values():
            stage = dep.get("stage") or {}
            if stage.get("model") == self.config.from_model and stage.get("section") == "attacks":
                src = source_config(dep)
                n = int((dep.get("config") or {}).get("n_examples") or 0) or inputs.documents(src.data).documents
                length = sequence_length(src)
                return Workload(forward_tokens=2 * n * length, context=length, queries=2 * n,
                                forward_calls=n, batches=[Batch(2, length, logit_positions=src.continuation_tokens + 1,
                                                                label="exact scoring")],
                                disk_bytes=n * RECORD_BYTES, disk_note="per-example records",
                                notes=[f"{n:,} replayed examples x 2 exact scores"])
        raise NoEstimate(f"no attack stage of model '{self.config.from_model}' among the stages it needs")
