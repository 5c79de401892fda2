"""Attack plugin ``uat_transfer``: one row of the model x model transfer matrix of universal triggers.

Used with ``needs: [uat]`` (or any universal attack that reports a trigger the same way: ``trigger_ids``,
``trigger_text``, ``tokenizer_fingerprint`` and, for a string placed after the context, ``trigger_placement:
suffix`` in its metrics, with ``eval_data``/``n_eval`` and the task options in its config; ``uat`` and universal
``gcg`` do), its stage for model B (and a seed) receives the results of those stages of every model of the suite for
that seed. Each source model A's trigger is evaluated on B over A's held-out split with A's task options (read from
A's stored config, so the row matches A's own held-out numbers on the diagonal). The trigger ids are used as they
are when A and B share a vocabulary, and re-tokenised from the trigger text otherwise.

Metrics: ``transfer: {source_model: {success_rate, mean_relative_increase, ..., trigger_text, retokenized}}``, and
the shared summary keys pooled over all source triggers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from harness import (RECORD_BYTES, AttackPlugin, Batch, DocumentSource, HarnessError, LoadedModel, MetricSpec,
                     NoEstimate, PlanInputs, PluginConfig, StageContext, Workload, hookimpl,
                     planned_examples, sequence_length)
from harness.attacks import ATTACK_METRICS, Scorer, TaskConfig, attack_summary, held_out_examples
from harness.summary import summary_from_records
from harness.triggers import EVAL_CHUNK, evaluate_trigger, tokenizer_fingerprint

from . import SUCCESS_THRESHOLD


class UATTransferConfig(PluginConfig):
    limit_fields = ("n_eval",)  # `harness run --limit N` caps these
    #: Held-out documents (default: each source trigger's own held-out split).
    eval_data: DocumentSource | None = None
    #: Held-out documents taken (as the source took them); None = all.
    n_eval: int | None = Field(default=None, ge=1)
    #: Tokens per forward pass when evaluating the triggers (batch size x length): the memory budget.
    batch_tokens: int = Field(default=16384, ge=64)


class TriggerSource(TaskConfig):
    """What a transfer row needs of a source stage's config: its held-out split, task options and trigger length."""

    #: Success: the continuation NLL raised by more than this fraction (the built-in attacks' shared choice).
    threshold: float = Field(default=SUCCESS_THRESHOLD, ge=0)
    eval_data: DocumentSource
    n_eval: int | None = None
    #: ``seeded``: the source took its held-out documents in the suite's seeded order (``uat``'s ``eval_sample``).
    eval_sample: Literal["first", "seeded"] = "first"
    #: The trigger's length (``trigger_length`` of uat, ``n_tokens`` of gcg), for ``harness plan``.
    trigger_length: int = 10


def source_uat_config(result: dict[str, Any]) -> TriggerSource:
    """The options of a source stage: a ``uat`` entry (or its control), or any universal attack with ``eval_data``
    (e.g. ``gcg`` with ``universal: true``). Raises ValidationError for a stage without."""
    config = dict(result.get("config") or {})
    if "n_tokens" in config and "trigger_length" not in config:
        config["trigger_length"] = config["n_tokens"]
    return TriggerSource.model_validate({k: v for k, v in config.items() if k in TriggerSource.model_fields})


# -- cost model (harness plan) ------------------------------------------------------------------------------------
def transfer_workload(cfg: UATTransferConfig, inputs: PlanInputs) -> Workload:
    """``uat_transfer``: every source trigger (a ``uat`` stage it needs) on its held-out split, with and without it."""
    tokens = queries = 0
    batches, notes = [], []
    for _, dep in sorted(inputs.dependencies.items()):
        try:
            src = source_uat_config(dep)  # as the stage reads its input's config at run time
        except ValidationError:
            continue  # not a trigger (e.g. the training stage of the model)
        n, note = planned_examples(inputs, cfg.eval_data or src.eval_data, cfg.n_eval or src.n_eval, src, "eval_data")
        plain, triggered = sequence_length(src), sequence_length(src, src.trigger_length)
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
class UATTransfer(AttackPlugin[UATTransferConfig]):
    """Evaluates every model's universal trigger (the stages it needs) on this model: one transfer-matrix row."""

    name = "uat_transfer"
    version = "3"  # FLOPs count the vocabulary projection where it runs
    # v2: records and summary gain the budget (tokens, FLOPs)

    def declared_metrics(self) -> list[MetricSpec]:
        """The shared summary of every trigger pooled, and the matrix row: source model -> that trigger's summary."""
        return ATTACK_METRICS + [MetricSpec("transfer", "Transfer", kind="matrix", show=False,
                                            cells=("success_rate", "mean_relative_increase"))]

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        sources = {sid: r for sid, r in sorted(ctx.inputs.items()) if "trigger_ids" in (r.get("metrics") or {})}
        if not sources:
            needed = ", ".join(ctx.inputs) or "none"
            raise HarnessError(f"attacks.{ctx.stage.entry}: no trigger among the stages it needs ({needed}); fix: add "
                               "`needs: [<your uat entry>]`")
        models = [r["stage"]["model"] for r in sources.values()]
        tok = model.tokenizer
        fingerprint = tokenizer_fingerprint(tok)
        row: dict[str, Any] = {}
        pooled: list[dict[str, Any]] = []
        for sid, result in sources.items():
            metrics, stage = result["metrics"], result["stage"]
            # One column per source model; the entry name joins it when several entries give triggers.
            column = stage["model"] if models.count(stage["model"]) == 1 else f"{stage['entry']}/{stage['model']}"
            src = source_uat_config(result)
            eval_data = cfg.eval_data or src.eval_data
            # the source's own documents (a seeded split: its seed is this stage's)
            examples = held_out_examples(model, src, eval_data, cfg.n_eval or src.n_eval,
                                         f"{ctx.stage.entry} (held-out split of {sid})",
                                         ctx.seed if src.eval_sample == "seeded" else None)
            retokenized = metrics.get("tokenizer_fingerprint") != fingerprint
            trigger = (tok(metrics["trigger_text"], add_special_tokens=False)["input_ids"] if retokenized
                       else list(metrics["trigger_ids"]))
            records = evaluate_trigger(Scorer(model, cfg.batch_tokens), examples, trigger, model, ctx, src.threshold,
                                       id_prefix=f"{column}/", placement=metrics.get("trigger_placement", "prefix"),
                                       source=column, source_stage=sid)
            pooled += records
            # A cell: the shared attack metrics of this trigger's records (the core computes the pooled ones).
            row[column] = {**summary_from_records(ATTACK_METRICS, records), **attack_summary(records, src.threshold),
                           "source_stage": sid, "trigger_text": metrics["trigger_text"], "trigger_ids": trigger,
                           "retokenized": retokenized}
        threshold = next(iter(row.values()))["threshold"]
        return {**attack_summary(pooled, threshold), "transfer": row}

    def plan(self, inputs: PlanInputs) -> Workload:
        """Queries of this stage, from its config and those of the uat stages it needs (``harness plan``)."""
        return transfer_workload(self.config, inputs)


@hookimpl
def harness_attacks() -> list[type]:
    # edit_transfer (the per-example counterpart) registers here until it has its own entry point.
    from .edit_transfer import EditTransferAttack

    return [UATTransfer, EditTransferAttack]
