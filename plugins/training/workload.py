"""What a recovery-training stage costs, from its config alone (the trainers' ``plan``, read by ``harness plan``).

It mirrors the loop in :mod:`.trainer`: documents become blocks (packed: all tokens plus an end-of-text per
document, cut into ``seq_len``; padded: one row per document), ``steps`` (or ``epochs`` over the blocks) of
``micro_batch x grad_accum x processes`` rows, validation on ``val_blocks`` blocks before the first step, every
``val_every`` steps and after the last, snapshots of fp32 weights + AdamW state of which ``keep_checkpoints`` stay.
"""

from __future__ import annotations

import math

from harness import Batch, PlanInputs, TrainingSetup, Workload

#: Constrained linears per layer of each monotonic variant, as (rows, columns) in terms of hidden h and FFN width f.
CONSTRAINED = {
    "mlp_in": lambda h, f: h * f,
    "mlp_both": lambda h, f: 2 * h * f,
    "mlp_in_attn_out": lambda h, f: h * f + h * h,
    "gated_updown": lambda h, f: 2 * h * f,
    "gated_all": lambda h, f: 3 * h * f,
}
SNAPSHOT_BYTES_PER_PARAM = 4 + 8  # fp32 weights + two fp32 AdamW moments
#: Bytes per weight of a dtype (the export's ``save_dtype``, the dtype a model is loaded in; any other: 4, fp32).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def size(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


def validations(steps: int, val_every: int) -> int:
    """How often the loop validates: before the first step, every ``val_every`` steps, and after the last."""
    if not val_every:
        return 2
    return 1 + steps // val_every + (0 if steps % val_every == 0 else 1)


def training_workload(cfg, inputs: PlanInputs) -> Workload:
    """``cfg`` is a trainer's config (baseline or monotonic; a monotonic one has ``variant``)."""
    shape = inputs.shape
    docs = inputs.documents(cfg.data)
    if cfg.packing:
        blocks = int((docs.tokens + docs.documents) // cfg.seq_len)  # + one end-of-text token per document
        rows = f"{blocks:,} packed blocks of {cfg.seq_len} tokens"
    else:
        blocks = docs.documents
        rows = f"{blocks:,} padded rows of {cfg.seq_len} (one document each)"
    global_batch = cfg.micro_batch * cfg.grad_accum * inputs.processes
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * blocks / global_batch))
    train_tokens = steps * global_batch * cfg.seq_len  # padding costs compute too

    val_tokens, val_note = 0, ""
    if cfg.val_data is not None:
        val_docs = inputs.documents(cfg.val_data)
        val_blocks = min(cfg.val_blocks, int((val_docs.tokens + val_docs.documents) // cfg.seq_len))
        runs = validations(steps, cfg.val_every)
        val_note = f"; validation {runs}x {val_blocks} blocks"
        if cfg.stop_at_perplexity_of is not None:
            # the target: one pass of the arm's exported model over the same blocks, before training starts (its
            # weights are freed before the optimiser state exists, so they stay under the training peak); ``steps``
            # is then a cap, and priced as if reached
            runs += 1
            val_note += (f" (one of them the arm {cfg.stop_at_perplexity_of}'s, the target to stop at; priced at "
                         f"the {steps:,}-step cap)")
            if cfg.stop_match == "nearest":
                val_note += ("; stop_match nearest keeps the last validation's fp32 weights in host memory and in "
                             "every snapshot")
        val_tokens = runs * val_blocks * cfg.seq_len

    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if inputs.device == "cuda" else "fp32")
    extra, extra_notes = 0.0, []
    variant = getattr(cfg, "variant", None)  # the monotonic trainer's transform
    if variant is not None:
        per_layer = CONSTRAINED.get(variant)
        constrained = per_layer(shape.hidden, shape.intermediate) * shape.n_layers if per_layer else 0
        # W = softplus(V) is materialised (fp32) in every forward pass and kept, with its gradient, for backward.
        extra = 8.0 * constrained
        extra_notes.append(f"W = softplus(V) materialised with its gradient ({constrained / 1e6:,.0f}M constrained "
                           "weights)")
    teacher_tokens = 0
    if cfg.distill > 0:  # the frozen teacher: the weights as loaded, and one forward pass per training micro-batch
        loaded = DTYPE_BYTES.get(inputs.dtype, 4)
        # its logits (loaded dtype) and their fp32 log-softmax, held while the student's loss is computed
        teacher = loaded * shape.n_params + (loaded + 4) * cfg.micro_batch * cfg.seq_len * shape.vocab
        extra += teacher
        extra_notes.append(f"the distillation teacher's {inputs.dtype} weights and one micro-batch of its "
                           f"log-probabilities ({size(teacher)})")
        teacher_tokens = train_tokens
    setup = TrainingSetup(trainable_params=shape.n_params, micro_batch=cfg.micro_batch, seq_len=cfg.seq_len,
                          grad_accum=cfg.grad_accum, gradient_checkpointing=cfg.gradient_checkpointing,
                          autocast_bf16=precision == "bf16", extra_bytes=extra, extra_note="; ".join(extra_notes))

    snapshot = SNAPSHOT_BYTES_PER_PARAM * shape.n_params
    if cfg.stop_at_perplexity_of is not None and cfg.stop_match == "nearest":
        snapshot += 4 * shape.n_params  # the weights at the last validation above the target (fp32)
    # The newest snapshot is written before the oldest is pruned: keep + 1 exist for a moment.
    kept = min(cfg.keep_checkpoints + 1, max(1, math.ceil(steps / cfg.checkpoint_every)))
    export = DTYPE_BYTES[cfg.save_dtype] * shape.n_params
    token_cache = 4 * (blocks * cfg.seq_len + (cfg.val_blocks * cfg.seq_len if cfg.val_data is not None else 0))
    return Workload(
        forward_tokens=val_tokens + teacher_tokens, train_tokens=train_tokens, context=cfg.seq_len,
        batches=[Batch(cfg.micro_batch, cfg.seq_len, "weights", label="training"),
                 Batch(cfg.micro_batch, cfg.seq_len, "none", label="validation")],
        training=setup, disk_bytes=kept * snapshot + export + token_cache,
        disk_note=f"{kept} snapshots x {size(snapshot)} (fp32 weights + AdamW"
                  f"{' + the last validation weights' if snapshot > SNAPSHOT_BYTES_PER_PARAM * shape.n_params else ''}"
                  f") + {cfg.save_dtype} export "
                  f"{size(export)} + token cache {size(token_cache)}",
        notes=[f"{docs.documents:,} documents -> {rows}",
               f"{steps:,} steps x {global_batch} rows ({cfg.micro_batch} x {cfg.grad_accum} accumulation x "
               f"{inputs.processes} process(es)), {precision}{val_note}"
               + (f"; distilled from the loaded model (weight {cfg.distill}): a teacher forward pass per "
                  "micro-batch" if cfg.distill > 0 else "")])
