"""Peak memory of one pass, from the model's shape and the batch: formulas, each term named.

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"): a
transformer layer with fused (SDPA/flash) attention keeps about 17 x hidden values per token for its backward pass
(34·s·b·h bytes at 2 bytes each); with gradient checkpointing it keeps only its input (1 x hidden) and recomputes one
layer at a time. The logits term is what the harness's loss code holds per token and vocabulary entry: the logits,
their shifted/indexed copy, the fp32 log-softmax and its gradient (measured on CPU in fp32: 3.9 copies of 4 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...workload import Batch, ModelShape, TrainingSetup

#: Activation values per token per layer, in units of the hidden size, kept for the backward pass.
ACTIVATIONS_PER_LAYER = 17
#: Bytes per (token, vocabulary entry) of a training loss: logits, shifted copy, fp32 log-softmax, its gradient.
TRAIN_LOGIT_BYTES = 16
#: Share of an accelerator's memory a run can use (the CUDA context and allocator fragmentation take the rest).
USABLE = 0.9
DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


def dtype_bytes(dtype: str) -> int:
    return DTYPE_BYTES.get(dtype.replace("torch.", ""), 4)


@dataclass
class Memory:
    """Named parts, in bytes; ``total`` is their sum (the estimated peak)."""

    parts: dict[str, float] = field(default_factory=dict)
    label: str = ""

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def training_memory(shape: ModelShape, setup: TrainingSetup, micro_batch: int | None = None,
                    checkpointing: bool | None = None, shards: int = 1) -> Memory:
    """One training process: fp32 master weights, gradients and AdamW state (divided by ``shards`` under FSDP),
    bf16 weight copies under autocast, the activations and logits of one micro-batch."""
    b = micro_batch if micro_batch is not None else setup.micro_batch
    ckpt = setup.gradient_checkpointing if checkpointing is None else checkpointing
    tokens = b * setup.seq_len
    act = 2 if setup.autocast_bf16 else 4
    n, trainable = shape.n_params, setup.trainable_params
    parts = {"weights (fp32 master)": 4 * n / shards}
    if setup.autocast_bf16:
        parts["bf16 weight copies (autocast)"] = 2 * shape.compute_params
    parts["gradients (fp32)"] = 4 * trainable / shards
    parts["optimiser state (AdamW, fp32)"] = setup.optimizer_bytes_per_param * trainable / shards
    per_layer = ACTIVATIONS_PER_LAYER * shape.hidden * tokens * act
    if ckpt:
        parts["activations (checkpointed: layer inputs + one layer)"] = (
            shape.n_layers * shape.hidden * tokens * act + per_layer)
    else:
        parts["activations"] = shape.n_layers * per_layer
    parts["logits and loss"] = tokens * shape.vocab * TRAIN_LOGIT_BYTES
    if setup.extra_bytes:
        parts[setup.extra_note or "method"] = setup.extra_bytes
    return Memory(parts, f"training, micro-batch {b} x {setup.seq_len}" + (", checkpointing" if ckpt else ""))


def pass_memory(shape: ModelShape, dtype: str, batch: Batch) -> Memory:
    """A pass without weight gradients: scoring (``backward='none'``) or a gradient w.r.t. the inputs."""
    db = dtype_bytes(dtype)
    tokens = batch.tokens
    positions = batch.rows * (batch.logit_positions or batch.seq_len)
    if batch.logits_at_once:
        positions = min(positions, batch.logits_at_once)
    parts = {f"weights ({dtype})": shape.n_params * db}
    if batch.backward == "inputs":
        parts["activations kept for the backward pass"] = (
            shape.n_layers * ACTIVATIONS_PER_LAYER * shape.hidden * tokens * db)
        # the projected logits, their fp32 copy, log-softmax, gradients
        parts["logits and loss (with gradients)"] = positions * shape.vocab * (2 * db + 12)
        parts["embedding matrix (fp32 copy for the token scores)"] = shape.vocab * shape.hidden * (4 + db)
    else:
        parts["activations (one layer at a time)"] = ACTIVATIONS_PER_LAYER * shape.hidden * tokens * db
        # logits, the scored positions' copy, its fp32 upcast (when not fp32 already), the log-softmax
        parts["logits and loss"] = positions * shape.vocab * (2 * db + (4 if db < 4 else 0) + 4)
    return Memory(parts, f"{batch.label or 'pass'}: {batch.rows} x {batch.seq_len}"
                  + (" with input gradients" if batch.backward == "inputs" else ""))


def largest_micro_batch(shape: ModelShape, setup: TrainingSetup, capacity: float, checkpointing: bool,
                        shards: int = 1, limit: int = 65536) -> int:
    """The largest micro-batch whose training peak fits in ``capacity`` bytes (0: not even one row)."""
    fits = lambda b: training_memory(shape, setup, b, checkpointing, shards).total <= capacity  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
