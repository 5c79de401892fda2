"""Time per model call on this machine's CPU, measured on a model of the plan's shape with random weights.

On a GPU the plan divides FLOPs by the datasheet peak times an MFU. On a CPU that formula is poor for small
models: a forward pass of a 4-layer model spends milliseconds in framework overhead whatever its size, and the
matmul efficiency depends on the batch's geometry. So when the plan is for ``cpu``, each distinct call a stage
makes (model shape, kind of pass, rows x tokens, positions projected to the vocabulary) is run a few times on a
model built from the shape's config with random weights (the values do not change the time), and the stage's
compute time is ``calls x fixed cost + tokens x cost per token`` (two batch sizes timed). Calls too large to time
cheaply here fall back to the formula.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ...checkpointing import set_gradient_checkpointing
from ...workload import Batch, ModelShape, TrainingSetup

log = logging.getLogger("harness")

#: A call whose forward pass exceeds this many FLOPs is not timed (the formula is used): ~1-2 s on a laptop core.
MAX_CALL_FLOPS = 2e11
#: Timed repetitions of each call (after one warm-up), and the time budget that may cut them short.
REPEATS, BUDGET_S = 5, 1.0


@dataclass(frozen=True)
class Call:
    """One kind of model call: ``batch`` (rows x seq_len, its backward kind) and, for training, checkpointing."""

    rows: int
    seq_len: int
    backward: str
    logit_positions: int | None
    checkpointing: bool = False
    #: Scored positions projected to the vocabulary a slice at a time (the core's window scorer, perplexity).
    sliced_logits: bool = False

    @classmethod
    def of(cls, batch: Batch, training: TrainingSetup | None = None) -> Call:
        ckpt = bool(training and training.gradient_checkpointing and batch.backward == "weights")
        return cls(batch.rows, batch.seq_len, batch.backward, batch.logit_positions, ckpt,
                   bool(batch.logits_at_once))


def random_model(shape: ModelShape) -> Any:
    """A float32 model of ``shape``'s architecture and sizes with random weights (None: architecture unknown)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.for_model(
            shape.model_type, hidden_size=shape.hidden, num_hidden_layers=shape.n_layers,
            num_attention_heads=shape.n_heads, intermediate_size=shape.intermediate, vocab_size=shape.vocab,
            max_position_embeddings=shape.max_length, tie_word_embeddings=shape.tied_embeddings)
        model = AutoModelForCausalLM.from_config(config)
    except Exception as exc:  # an unknown model_type or config keys it does not take: use the formula
        log.debug("no random model for %s: %s", shape.model_type, exc)
        return None
    if getattr(model.config, "hidden_size", None) != shape.hidden:  # the config ignored the generic keys
        return None
    return model.float()


@dataclass(frozen=True)
class CallCost:
    """Seconds of a call of this kind with ``t`` tokens: ``fixed + per_token x t`` (framework overhead + compute)."""

    fixed: float
    per_token: float


@dataclass
class CallTimer:
    """The cost of a kind of call, measured once per (shape, call) and cached; ``None`` when it is not timed.

    Two sizes are timed: one row and the call's rows (same length); the line through them separates the fixed
    overhead of a call from its cost per token, so stages that run many smaller batches are costed right too.
    """

    max_call_flops: float = MAX_CALL_FLOPS
    threads: int = 0
    _models: dict[ModelShape, Any] = field(default_factory=dict)
    _seconds: dict[tuple[ModelShape, Call], float | None] = field(default_factory=dict)

    def seconds(self, shape: ModelShape, call: Call) -> float | None:
        key = (shape, call)
        if key not in self._seconds:
            self._seconds[key] = self._measure(shape, call)
        return self._seconds[key]

    def cost(self, shape: ModelShape, call: Call) -> CallCost | None:
        full = self.seconds(shape, call)
        if full is None:
            return None
        if call.rows == 1:
            return CallCost(full, 0.0)
        one = self.seconds(shape, replace(call, rows=1))
        if one is None:
            return None
        per_token = max(0.0, (full - one) / ((call.rows - 1) * call.seq_len))
        return CallCost(max(0.0, full - per_token * call.rows * call.seq_len), per_token)

    @property
    def measured(self) -> int:
        return sum(s is not None for s in self._seconds.values())

    def _model(self, shape: ModelShape) -> Any:
        if shape not in self._models:
            self._models[shape] = random_model(shape)
        return self._models[shape]

    def _measure(self, shape: ModelShape, call: Call) -> float | None:
        import torch

        if 2 * shape.compute_params * call.rows * call.seq_len > self.max_call_flops:
            return None
        model = self._model(shape)
        if model is None:
            return None
        self.threads = torch.get_num_threads()
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, shape.vocab, (call.rows, call.seq_len), generator=gen)
        run = self._runner(model, ids, call)
        run()  # warm-up: thread pool, kernels, allocator
        times: list[float] = []
        stop = time.perf_counter() + BUDGET_S
        while len(times) < REPEATS and (len(times) < 2 or time.perf_counter() < stop):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        if call.checkpointing:
            set_gradient_checkpointing(model, False)
        return statistics.median(times)

    @staticmethod
    def _runner(model: Any, ids: Any, call: Call) -> Any:
        """The call as the harness makes it: scoring under no_grad with the tail's logits, a gradient to the input
        embeddings, or a training micro-step (loss, backward, AdamW step)."""
        import torch
        import torch.nn.functional as F

        if call.backward == "none":
            model.eval()
            if call.logit_positions and call.seq_len > 1:  # the core's candidate scorer, as attacks call it
                from ...scoring import continuation_nll

                scored = min(max(1, call.logit_positions - 1), call.seq_len - 1)
                return lambda: continuation_nll(model, ids, scored, ids.numel())
            if call.sliced_logits and call.seq_len > 1:  # the core's window scorer, as perplexity calls it
                from ...scoring import Window, score_windows

                windows = [Window(tuple(row.tolist()), call.seq_len) for row in ids]  # seq_len fed, all scored
                nexts = [int(row[0]) for row in ids]  # any token: only the cost is measured
                return lambda: score_windows(model, windows, nexts, ids.numel())

            def score() -> None:  # every position scored, as training's validation does
                with torch.no_grad():
                    logits = model(input_ids=ids).logits
                    F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
            return score
        if call.backward == "inputs":
            model.eval()
            table = model.get_input_embeddings().weight.detach()
            keep = {"logits_to_keep": call.logit_positions} if call.logit_positions else {}

            def gradient() -> None:  # the gradient to the input embeddings, then every token's first-order score
                embeds = table[ids].requires_grad_(True)
                logits = model(inputs_embeds=embeds, **keep).logits
                loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, -logits.shape[1]:].flatten())
                (grad,) = torch.autograd.grad(loss, embeds)
                grad.sum(0) @ table.T
            return gradient
        model.train()
        if call.checkpointing:
            set_gradient_checkpointing(model, True)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

        def step() -> None:
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step
