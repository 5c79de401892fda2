"""Trainer plugins ``baseline`` and ``monotonic``: recovery training of a pretrained causal LM, resumable.

Both run the same loop on the same data and schedule, so a comparison between their outputs is fair; ``monotonic``
first constrains the feed-forward weights (:mod:`.monotonic`; for Llama-family models ``init: shift`` converts the
model exactly to OLMo first, :mod:`.llama_shift`); ``baseline`` may first add seeded noise to its FFN weights
(``ffn_noise``, a damage control). Every stage's result records ``weight_change`` (:mod:`.weight_change`). The loop,
per optimiser step::

    rows      = schedule.rows(step)                 # the global batch: a pure function of (seed, data recipe, step)
    for each micro-batch of this process's rows:    # gradient accumulation, DDP syncs only on the last
        loss = summed token NLL * world / tokens in the global batch
        loss.backward()
    stop if the loss or the gradient norm is not finite (the last snapshot stays the newest)
    clip, AdamW step, warmup-then-cosine learning rate
    constraint: project -> clamp the constrained weights to >= min_weight (projected gradient)
    log a row; validate every `val_every` steps; snapshot every `checkpoint_every` steps and when asked to stop
    stop_at_perplexity_of: stop once the validation perplexity is at most that arm's (a damage-matched control)

Normalising by the tokens of the whole global batch (not per micro-batch) makes ``grad_accum`` x ``micro_batch``
the same update as one batch of their product, also when rows hold different numbers of real tokens (padding).
Master weights and optimiser state are fp32; on GPU the forward pass runs under bf16 autocast (pure-bf16 weights
would round small updates away). Under ``torchrun``/``accelerate launch`` the model is replicated (DDP) or
sharded (FSDP) across the processes (:mod:`.parallel`); each process reads its own slice of every global batch.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from harness import (
    DATA_ORDER_FINGERPRINT,
    DocumentSource,
    MetricSpec,
    HarnessError,
    LoadedModel,
    NonFiniteLoss,
    PluginConfig,
    StageContext,
    StagePreempted,
    TrainerPlugin,
    atomic_write_json,
    derive_seed,
    hookimpl,
    native_bf16,
    set_gradient_checkpointing,
)

from .data import IGNORE, Blocks, BlockSchedule, build_blocks, cached_blocks, data_recipe, order_fingerprint
from .monotonic import (
    MODEL_TYPES,
    MonotoneActivation,
    MonotonicSpec,
    merge,
    negative_entries,
    project_,
    transform_model,
)
from .parallel import DataParallel, gradient_sync
from .state import Processes, Snapshots, setup_processes
from .weight_change import effective_weights, group_change, parameter_group


class TrainConfig(PluginConfig):
    """Options shared by both trainers. Defaults are the published recipe's baseline (Pythia-1.4B)."""

    #: Training documents (streamed hub dataset in full mode, local jsonl in quick mode).
    data: DocumentSource
    #: Held-out documents for validation perplexity (packed blocks); none: no validation.
    val_data: DocumentSource | None = None
    #: Tokens per training block (row).
    seq_len: int = Field(default=2048, ge=8)
    #: Pack documents into full blocks (EOS between them); false: one padded document per row.
    packing: bool = True
    #: Rows per forward pass, per process.
    micro_batch: int = Field(default=8, ge=1)
    #: Micro-batches per optimiser step (global batch: micro_batch x grad_accum x processes rows).
    grad_accum: int = Field(default=4, ge=1)
    #: Length of training in passes over the blocks (ignored when ``steps`` is set).
    epochs: float = Field(default=5.0, gt=0)
    #: Optimiser steps (overrides ``epochs``).
    steps: int | None = Field(default=None, ge=1)
    #: AdamW's peak learning rate (after warm-up; then a cosine decay).
    lr: float = Field(default=1e-5, gt=0)
    #: Fraction of the steps spent warming the learning rate up linearly from 0.
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    #: The cosine decays to this fraction of ``lr``.
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    #: AdamW's decoupled weight decay.
    weight_decay: float = Field(default=0.01, ge=0)
    #: AdamW's (beta1, beta2).
    adam_betas: tuple[float, float] = (0.9, 0.999)
    #: AdamW's epsilon.
    adam_eps: float = Field(default=1e-8, gt=0)
    #: Clip the global gradient norm to this (none: no clipping).
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    #: ``auto``: bf16 autocast with fp32 master weights on a GPU that computes in bf16, fp32 elsewhere. ``bf16`` on a
    #: device without native bf16 kernels (a CPU without AVX512-BF16 or AMX, a GPU before Ampere) is refused: autocast
    #: would emulate it, measured 26x slower than fp32 for SmolLM2-135M on a 2-core AVX2 CPU.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: Recompute activations in the backward pass (less memory, about a third more compute).
    gradient_checkpointing: bool = False
    #: Read the blocks in a seeded order each epoch (``data_seed``); false: in the order they were packed.
    shuffle: bool = True
    #: Seed of the data order (none: the run seed). The order is keyed by this seed and the data recipe (the training
    #: blocks' content, i.e. ``data`` tokenised to ``seq_len``, and the global batch), never by the entry name, so
    #: arms that share a recipe and a seed read the same blocks in the same order (common random numbers: their
    #: difference carries no data-order noise).
    data_seed: int | None = Field(default=None, ge=0, lt=2**63)
    #: Validate every N steps (0: only before the first and after the last step).
    val_every: int = Field(default=0, ge=0)
    #: Validation blocks of ``seq_len`` tokens (the first ones of ``val_data``).
    val_blocks: int = Field(default=64, ge=1)
    #: Write a resumable snapshot every N steps (and always after the last one and when asked to stop).
    checkpoint_every: int = Field(default=500, ge=1)
    #: Resumable snapshots kept (the oldest are deleted).
    keep_checkpoints: int = Field(default=2, ge=1)
    #: dtype of the exported Hugging Face checkpoint.
    save_dtype: Literal["float32", "bfloat16"] = "float32"
    #: Knowledge distillation from the model as loaded (a frozen copy taken before any transform): each token's
    #: loss is ``(1 - distill) * NLL + distill * KL(teacher || student)`` over the vocabulary. A damaged start gets
    #: the teacher's whole next-token distribution instead of one sampled token. 0: plain NLL. The logged training
    #: loss stays the NLL either way, comparable across arms; the copy costs one forward pass per micro-batch and
    #: the model's weights once more in memory on every process.
    distill: float = Field(default=0.0, ge=0, le=1)
    #: Stop at the first validation whose perplexity is at most that of this train entry's model at the same seed,
    #: measured on this entry's own validation blocks (``steps`` is then the most it trains): a damage-matched
    #: control, the same training stopped where it matches the arm's perplexity instead of where the arm stopped.
    #: The entry must be in this entry's ``needs:``; ``val_blocks`` sets how well a match here carries over to other
    #: text, ``val_every`` how closely it can match. None: train every step.
    stop_at_perplexity_of: str | None = None
    #: With ``stop_at_perplexity_of``, which validation to stop at. ``first_below``: the first whose perplexity is
    #: at most the target. ``nearest``: that one or the validation before it (still above the target), whichever is
    #: nearer the target in log perplexity, so the match is off by at most half the fall between two validations
    #: instead of a whole one. The earlier one's weights are kept (one more copy of the weights in memory and in every
    #: snapshot, so a resumed run stops where an uninterrupted one would), and when they are the nearer the stage
    #: exports them and reports their ``steps``.
    stop_match: Literal["first_below", "nearest"] = "first_below"

    # Stages trained before these options existed trained without them: their cache keys stay valid.
    key_omits_defaults: ClassVar[tuple[str, ...]] = ("distill", "stop_at_perplexity_of", "stop_match")

    @model_validator(mode="after")
    def _stop_needs_validation(self) -> TrainConfig:
        if self.stop_at_perplexity_of is not None and (self.val_data is None or not self.val_every):
            raise ValueError("stop_at_perplexity_of compares validation perplexities: set `val_data:` and "
                             "`val_every:` (validations to stop at; 1 checks after every step)")
        if self.stop_match != "first_below" and self.stop_at_perplexity_of is None:
            raise ValueError(f"stop_match: {self.stop_match} chooses where a control stopped at an arm's perplexity "
                             "stops: set `stop_at_perplexity_of:` too, or drop `stop_match:`")
        return self


class BaselineConfig(TrainConfig):
    #: Gaussian noise added to every FFN weight matrix before training, with standard deviation ``ffn_noise`` times
    #: that matrix's own standard deviation (seeded by the run seed and stage): a damaged but unconstrained control
    #: whose perplexity a suite can match to a monotonic arm's. 0: none.
    ffn_noise: float = Field(default=0.0, ge=0)


class MonotonicConfig(TrainConfig):
    """The baseline's options plus the transform; defaults are the published monotonic recipe."""

    epochs: float = Field(default=10.0, gt=0)
    lr: float = Field(default=5e-5, gt=0)
    warmup_ratio: float = Field(default=0.2, ge=0, le=1)
    #: Which linears are constrained: gpt_neox mlp_in | mlp_both | mlp_in_attn_out; llama gated_updown | gated_all.
    variant: str = "mlp_both"
    #: ``abs`` (published: softplus⁻¹|W0|) or ``shift`` (function-preserving; Llama-family RMSNorm models are first
    #: converted exactly to OLMo, see llama_shift.py, and the exported checkpoint is an OlmoForCausalLM).
    init: Literal["abs", "shift"] = "abs"
    #: ``softplus``: W = softplus(V), V trained (published); ``project``: W trained and clamped to >= min_weight after
    #: every optimiser step (weight decay pulls W toward 0); ``none``: the init only, then unconstrained training
    #: (a control: the init's damage without the constraint; the checkpoint is not marked monotonic).
    constraint: Literal["softplus", "project", "none"] = "softplus"
    #: Smallest constrained weight right after the init (``project``: also the floor of every step).
    min_weight: float = Field(default=1e-4, gt=0)
    #: ``shift`` on RMSNorm models: width of the converted residual stream (none: hidden_size + 1).
    stream_width: int | None = Field(default=None, ge=2)
    #: ``monotone`` replaces the FFN activation by ``monotone_activation``: an activation change. With ``mlp_both``
    #: the FFN is monotone as a map on R^d, but on a LayerNorm model its input is zero-mean, so that is not a
    #: property of the model's function (a recentred copy computes the same map); see the monotonic module.
    activation: Literal["original", "monotone"] = "original"
    #: the monotone activation that ``activation: monotone`` puts in place of GELU/SiLU
    monotone_activation: MonotoneActivation = "relu"

    @field_validator("variant")
    @classmethod
    def _known_variant(cls, value: str) -> str:
        # Which of these fits the model is checked once it is loaded; a typo is caught already here.
        known = sorted({v for arch in MODEL_TYPES.values() for v in arch.variants})
        if value not in known:
            raise ValueError(f"unknown variant '{value}'; known: {', '.join(known)}")
        return value


# -- pieces of the loop -----------------------------------------------------------------------------------------------
def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """Learning-rate multiplier for optimiser step ``i`` (0-based): linear warmup, then cosine to ``min_ratio``."""

    def factor(i: int) -> float:
        if i < warmup_steps:
            return (i + 1) / warmup_steps
        progress = (i - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; biases and norm gains (1-d parameters) are not decayed, as in Hugging Face's Trainer."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps)


def resolve_precision(requested: str, device: torch.device, where: str) -> str:
    """``precision`` as this stage runs it: ``auto`` resolved, ``bf16`` where it would be emulated refused (before
    anything is loaded or trained, so nothing is lost)."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" and native_bf16(device) else "fp32"
    if requested == "bf16" and not native_bf16(device):
        capability = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else device.type
        raise HarnessError(f"{where}.precision: bf16 on a {device.type} without native bf16 ({capability}): autocast "
                           "would emulate it (harness.native_bf16: about 26x slower than fp32); fix: "
                           f"`precision: fp32` (or `{where}.precision=fp32` on the command line), or run it on a "
                           "CPU with AVX512-BF16/AMX or an Ampere or newer GPU")
    return requested


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Gradient checkpointing on, as the core switches it (the plan's calibration times the same calls)."""
    set_gradient_checkpointing(model, True)


def count_targets(batch: dict[str, torch.Tensor]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Every position's logits, flattened to ``[rows x positions, vocabulary]``."""
    mask = batch["attention_mask"]
    # Packed blocks have no padding: without a mask the model takes its faster plain-causal attention path.
    extra = {} if bool(mask.all()) else {"attention_mask": mask.to(device)}
    logits = model(input_ids=batch["input_ids"].to(device), use_cache=False, **extra).logits
    return logits.reshape(-1, logits.shape[-1])


def _next_tokens(batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Each position's next token (``IGNORE`` where unlabelled), flattened like :func:`_logits`."""
    # Shift the labels, not the logits (slicing the logits would copy the largest tensor of the step).
    return F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE).to(device).reshape(-1)


def token_nll_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Summed next-token NLL (fp32) of the labelled positions of ``batch``."""
    return F.cross_entropy(_logits(model, batch, device).float(), _next_tokens(batch, device), ignore_index=IGNORE,
                           reduction="sum")


def distilled_loss_sum(model: torch.nn.Module, teacher: torch.nn.Module, batch: dict[str, torch.Tensor],
                       device: torch.device, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed ``(1 - weight) * NLL + weight * KL(teacher || student)``, summed NLL) over the labelled positions."""
    logp = F.log_softmax(_logits(model, batch, device).float(), dim=-1)
    targets = _next_tokens(batch, device)
    labelled = targets != IGNORE
    with torch.no_grad():
        teacher_logp = F.log_softmax(_logits(teacher, batch, device).float(), dim=-1)
    nll = F.nll_loss(logp, targets, ignore_index=IGNORE, reduction="sum")
    kl = F.kl_div(logp[labelled], teacher_logp[labelled], log_target=True, reduction="sum")
    return (1 - weight) * nll + weight * kl, nll


def accumulate_gradients(model: torch.nn.Module, micro_batches: list[dict[str, torch.Tensor]], global_tokens: int,
                         device: torch.device, world: int = 1, autocast=contextlib.nullcontext,
                         teacher: torch.nn.Module | None = None, distill: float = 0.0) -> float:
    """Backpropagate the mean token loss of the global batch through this process's micro-batches: the NLL, or
    with a ``teacher`` the ``distill``-weighted mix of NLL and KL divergence (:func:`distilled_loss_sum`).

    Each micro-batch contributes ``loss_sum * world / global_tokens``: DDP and FSDP average gradients over the
    ``world`` processes, so the total is the gradient of the global token mean, however rows and tokens are split.
    Returns this process's summed NLL.
    """
    total = 0.0
    for i, batch in enumerate(micro_batches):
        with gradient_sync(model, enabled=i == len(micro_batches) - 1):
            with autocast():
                if teacher is None:
                    loss = nll = token_nll_sum(model, batch, device)
                else:
                    loss, nll = distilled_loss_sum(model, teacher, batch, device, distill)
            (loss * (world / global_tokens)).backward()
        total += float(nll.detach())
    return total


@torch.no_grad()
def validation_nll(model: torch.nn.Module, blocks: Blocks, procs: Processes, micro_batch: int,
                   autocast=contextlib.nullcontext) -> tuple[float, int]:
    """(summed NLL, tokens) over all validation blocks; each process scores every world-th block."""
    was_training = model.training
    model.eval()
    rows = list(range(procs.rank, len(blocks), procs.world))
    # Every process makes the same number of forward passes (FSDP gathers each layer's weights from all of them):
    # one with fewer blocks repeats its first batch and does not count it.
    passes = math.ceil(math.ceil(len(blocks) / procs.world) / micro_batch)
    nll, tokens = 0.0, 0
    for i in range(passes):
        chunk = rows[i * micro_batch:(i + 1) * micro_batch]
        batch = blocks.batch(chunk or rows[:micro_batch] or [0])
        with autocast():
            value = float(token_nll_sum(model, batch, procs.device))
        if chunk:
            nll += value
            tokens += count_targets(batch)
    model.train(was_training)
    nll, tokens = procs.sum([nll, float(tokens)])
    return nll, int(tokens)


@dataclass
class Progress:
    """Counters saved with every snapshot (and restored on resume)."""

    step: int = 0
    tokens_seen: int = 0
    train_time_s: float = 0.0
    #: Seconds spent validating (not part of ``train_time_s``, which times the steps).
    val_time_s: float = 0.0
    last_loss: float | None = None
    initial_val_perplexity: float | None = None
    last_val_perplexity: float | None = None
    #: ``stop_at_perplexity_of``: the target was reached (at ``step``); a resumed run trains no further.
    stopped_at_target: bool = False
    best_val_perplexity: float | None = None
    #: ``stop_match: nearest``: the last validation above the target (``step``, ``tokens_seen``, ``last_loss``,
    #: ``val_perplexity``), whose weights each snapshot keeps beside the training state
    previous_check: dict[str, Any] | None = None
    #: ``stop_match: nearest``: the stop chose ``previous_check`` (nearer the target than the validation after it)
    export_previous: bool = False

    def at_validation(self, perplexity: float | None) -> dict[str, Any]:
        """Where training stands now, with this validation's perplexity (``previous_check``'s form)."""
        return {"step": self.step, "tokens_seen": self.tokens_seen, "last_loss": self.last_loss,
                "val_perplexity": perplexity}


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def set(self, **fields: Any) -> None:
        pass


# -- the trainers -----------------------------------------------------------------------------------------------------
#: The config of a recovery trainer: the baseline's, or a subclass that adds its transform's options.
TrainConfigT = TypeVar("TrainConfigT", bound=TrainConfig)


class RecoveryTrainer(TrainerPlugin[TrainConfigT]):
    """Recovery training without constraints (the fair baseline: same data, schedule and loop)."""

    name = "baseline"
    #: 2: the data order is keyed by the data recipe and the seed, no longer by the stage (other batches than 1's).
    version = "2"
    #: Set by hand: this class is also the generic base of the trainers that add a transform.
    Config = BaselineConfig
    default_config = "configs/baseline.yaml"  # the published recipe (package data)

    def transform(self, model: torch.nn.Module, ctx: StageContext) -> tuple[torch.nn.Module, dict[str, Any]]:
        """Change the model before training; returns the model to train (it may be a new one) and what
        ``harness.json`` records about the change."""
        cfg = self.config
        if not isinstance(cfg, BaselineConfig) or cfg.ffn_noise == 0:
            return model, {"monotonic": False}
        # keyed by (seed, noise level), not by the entry: two controls with the same recipe get the same noise
        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, "ffn-noise", cfg.ffn_noise))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.ndim >= 2 and parameter_group(name) == "ffn":
                    noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
                    param.add_((noise * cfg.ffn_noise * param.float().std().cpu()).to(param.device, param.dtype))
        return model, {"monotonic": False, "ffn_noise": cfg.ffn_noise}

    def declared_metrics(self) -> list[MetricSpec]:
        """The numbers of the training summary (the per-step records feed the report's training curves)."""
        ppl = {"higher_is_better": False, "aggregation": "none"}
        return [
            MetricSpec("final_train_loss", "Final training loss", **ppl, digits=3),
            MetricSpec("initial_val_perplexity", "Validation perplexity before", **ppl),
            MetricSpec("final_val_perplexity", "Validation perplexity after", **ppl),
            MetricSpec("best_val_perplexity", "Best validation perplexity", **ppl),
            MetricSpec("target_val_perplexity", "Validation perplexity to stop at", **ppl),
            MetricSpec("steps", "Steps", aggregation="none", digits=0),
            # a control stopped at an arm's perplexity: the steps it trained (more than ``steps`` when
            # ``stop_match: nearest`` exported the validation before the last)
            MetricSpec("steps_run", "Steps run", aggregation="none", digits=0, show=False),
            MetricSpec("tokens", "Tokens", aggregation="none", digits=0),
            MetricSpec("train_time_s", "Training time (s)", aggregation="none", digits=1, show=False),
            MetricSpec("val_time_s", "Validation time (s)", aggregation="none", digits=1, show=False),
            MetricSpec("tokens_per_s", "Tokens / s", aggregation="none", digits=0, show=False),
            MetricSpec("wall_time_s", "Wall time (s)", aggregation="none", digits=1, show=False),
            MetricSpec("blocks", "Training blocks", aggregation="none", digits=0, show=False),
            MetricSpec("global_batch", "Global batch", aggregation="none", digits=0, show=False),
            MetricSpec("world_size", "Processes", aggregation="none", digits=0, show=False),
            # ||W - W0|| / ||W0|| per parameter group (ffn, attention, embeddings, other): how much each part trained
            MetricSpec("weight_change/{group}", "Relative weight change ({group})", aggregation="none", digits=4),
            MetricSpec("weight_change_norm/{group}", "Weight change norm ({group})", aggregation="none", digits=3,
                       show=False),
            MetricSpec("loss_by_step", "training loss", field="loss", x="step", kind="series"),
            MetricSpec("val_perplexity_by_step", "validation perplexity", field="val_perplexity", x="step",
                       kind="series", start="initial_val_perplexity"),
        ]

    def plan(self, inputs):
        """Tokens, memory and disk of this training stage, from the config (``harness plan``)."""
        from .workload import training_workload

        return training_workload(self.config, inputs)

    def train(self, loaded: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config
        started = time.time()
        procs = setup_processes(ctx.torch_device())
        precision = resolve_precision(cfg.precision, procs.device, f"train.{ctx.stage.entry}")
        state_dir = ctx.stage_dir / "train_state"
        state_dir.mkdir(parents=True, exist_ok=True)
        tokenizer = loaded.tokenizer

        # The teacher is the model as loaded, before the transform changes it in place.
        teacher = (copy.deepcopy(loaded.model).to(procs.device).eval().requires_grad_(False) if cfg.distill > 0
                   else None)
        net, provenance = self.transform(loaded.model, ctx)
        net.float().to(procs.device).train()  # fp32 master weights, whatever dtype the model was loaded in
        if cfg.gradient_checkpointing:
            enable_checkpointing(net)
        # W0 for weight_change, before FSDP shards the model. The transform is deterministic (seeded noise), so a
        # resumed run gets the same W0 here before it loads its snapshot.
        initial = effective_weights(net) if procs.is_main else None
        parallel = DataParallel(net, procs)  # before the optimiser: FSDP replaces the parameters by their shards
        params = dict(net.named_parameters())  # FSDP keeps the names; the tensors are this process's shards now
        # constraint: project -- the weights clamped to the floor after every optimiser step
        projected = ([params[name] for name in provenance["constrained_weights"]]
                     if provenance.get("constraint") == "project" else [])
        floor = float(provenance.get("min_weight", 0.0))

        train_blocks = cached_blocks(state_dir / "train_blocks.npz",
                                     lambda: build_blocks(cfg.data, tokenizer, cfg.seq_len, cfg.packing),
                                     procs.is_main, procs.barrier)
        val_blocks = None
        if cfg.val_data is not None:
            val_blocks = cached_blocks(state_dir / "val_blocks.npz",
                                       lambda: build_blocks(cfg.val_data, tokenizer, cfg.seq_len, True,
                                                            limit=cfg.val_blocks),
                                       procs.is_main, procs.barrier)
        per_process = cfg.micro_batch * cfg.grad_accum
        global_batch = per_process * procs.world
        total_steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(train_blocks) / global_batch))
        warmup_steps = round(cfg.warmup_ratio * total_steps)

        optimizer = make_optimizer(net, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps,
                                                                               cfg.min_lr_ratio))
        autocast = ((lambda: torch.autocast(procs.device.type, dtype=torch.bfloat16)) if precision == "bf16"
                    else contextlib.nullcontext)
        # stop_at_perplexity_of: the arm's perplexity on these validation blocks, and its steps (the data-order
        # horizon the two are compared on)
        target, horizon = ((None, total_steps) if cfg.stop_at_perplexity_of is None or val_blocks is None else
                           self.target(ctx, lambda arm: validation_nll(arm.to(procs.device), val_blocks, procs,
                                                                       cfg.micro_batch, autocast)))

        # stop_match: nearest -- the weights at progress.previous_check (on the main process)
        keep_previous = target is not None and cfg.stop_match == "nearest"
        previous_weights: dict[str, torch.Tensor] | None = None

        def validate() -> float | None:
            if val_blocks is None:
                return None
            t0 = time.perf_counter()
            nll, tokens = validation_nll(net, val_blocks, procs, cfg.micro_batch, autocast)
            progress.val_time_s += time.perf_counter() - t0
            return math.exp(nll / tokens)

        snapshots = Snapshots(state_dir, cfg.keep_checkpoints, procs)
        saved = snapshots.load_latest()
        if saved is not None:
            parallel.load(optimizer, saved, str(state_dir))
            scheduler.load_state_dict(saved["scheduler"])
            progress = Progress(**saved["progress"])
            previous_weights = saved.get("previous_weights")
            ctx.log(f"resumed from step {progress.step} of {total_steps}")
        else:
            progress = Progress()
            progress.initial_val_perplexity = progress.best_val_perplexity = validate()
            if target is not None and progress.initial_val_perplexity is not None and \
                    progress.initial_val_perplexity <= target:  # matched before any training
                progress.last_val_perplexity, progress.stopped_at_target = progress.initial_val_perplexity, True
            elif keep_previous and progress.initial_val_perplexity is not None:
                progress.previous_check = progress.at_validation(progress.initial_val_perplexity)
                previous_weights = parallel.weights()

        def snapshot() -> None:
            snapshots.save(progress.step, {**parallel.state(optimizer), "scheduler": scheduler.state_dict(),
                                           "progress": asdict(progress),
                                           **({"previous_weights": previous_weights} if keep_previous else {})})

        model = parallel.model
        recipe = data_recipe(train_blocks, global_batch, cfg.shuffle)
        data_seed = ctx.seed if cfg.data_seed is None else cfg.data_seed
        schedule = BlockSchedule(len(train_blocks), global_batch, cfg.shuffle,
                                 lambda epoch: torch.Generator().manual_seed(
                                     derive_seed(data_seed, "data-order", recipe, epoch)))
        logged = ctx.records.done() if procs.is_main else set()
        bar = ctx.progress("train", total_steps) if procs.is_main else _NoBar()
        with bar:
            bar.advance(progress.step)
            while progress.step < total_steps and not progress.stopped_at_target:
                if procs.any(ctx.should_stop):
                    snapshot()
                    raise StagePreempted(f"stopped at step {progress.step} of {total_steps}")
                t0 = time.perf_counter()
                rows = schedule.rows(progress.step)[procs.rank * per_process:(procs.rank + 1) * per_process]
                micro = [train_blocks.batch(rows[i:i + cfg.micro_batch]) for i in range(0, per_process,
                                                                                          cfg.micro_batch)]
                local_tokens = sum(count_targets(b) for b in micro)
                global_tokens = int(procs.sum([float(local_tokens)])[0])
                nll = accumulate_gradients(model, micro, global_tokens, procs.device, procs.world, autocast,
                                           teacher, cfg.distill)
                loss = procs.sum([nll])[0] / global_tokens
                self._check_finite("loss", loss, progress.step, total_steps, snapshots)
                grad_norm = parallel.clip_grad_norm(cfg.max_grad_norm or math.inf)
                self._check_finite("gradient norm", grad_norm, progress.step, total_steps, snapshots)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                project_(projected, floor)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step_time = time.perf_counter() - t0

                progress.step += 1
                progress.tokens_seen += global_tokens
                progress.train_time_s += step_time
                progress.last_loss = loss
                row: dict[str, Any] = {"id": f"step-{progress.step}", "step": progress.step, "loss": loss, "lr": lr,
                                       "tokens_seen": progress.tokens_seen,
                                       "tokens_per_s": global_tokens / step_time, "grad_norm": grad_norm,
                                       "epoch": progress.step * global_batch / len(train_blocks),
                                       "time": time.time()}
                if (cfg.val_every and progress.step % cfg.val_every == 0) or progress.step == total_steps:
                    ppl = validate()
                    if ppl is not None:
                        row["val_perplexity"] = progress.last_val_perplexity = ppl
                        progress.best_val_perplexity = min(ppl, progress.best_val_perplexity or math.inf)
                        progress.stopped_at_target = target is not None and ppl <= target
                        if progress.stopped_at_target and progress.previous_check is not None:
                            # nearer in log perplexity: the ratio to the target closer to 1
                            above = progress.previous_check["val_perplexity"] / target
                            progress.export_previous = above < target / ppl
                            if not progress.export_previous:
                                previous_weights = None  # no longer needed: the final snapshot stays smaller
                        elif keep_previous:
                            progress.previous_check = progress.at_validation(ppl)
                            previous_weights = parallel.weights()
                if procs.is_main and row["id"] not in logged:  # rows after the last snapshot exist after a kill
                    ctx.records.append(row)
                bar.set(loss=loss, tok_s=round(row["tokens_per_s"]), lr=lr)
                bar.advance()
                if progress.step % cfg.checkpoint_every == 0 or progress.step == total_steps or \
                        progress.stopped_at_target:
                    snapshot()

        # What the exported model is: the last step, or (stop_match: nearest) the validation before it
        exported = progress.at_validation(progress.last_val_perplexity)
        if progress.export_previous and progress.previous_check is not None:
            exported = progress.previous_check
            parallel.load_weights(previous_weights)
        summary = {"final_train_loss": exported["last_loss"],
                   "initial_val_perplexity": progress.initial_val_perplexity,
                   "final_val_perplexity": exported["val_perplexity"],
                   "best_val_perplexity": progress.best_val_perplexity, "steps": exported["step"],
                   "tokens": exported["tokens_seen"], "train_time_s": progress.train_time_s,
                   "val_time_s": progress.val_time_s,
                   "tokens_per_s": progress.tokens_seen / progress.train_time_s if progress.train_time_s else None,
                   "wall_time_s": time.time() - started, "blocks": len(train_blocks), "global_batch": global_batch,
                   "world_size": procs.world, "parallel": procs.strategy if procs.distributed else "none",
                   "precision": precision,
                   # what this arm read, in order: equal fingerprints = the same tokens in the same batches. A
                   # control stopped at an arm's perplexity: its order over the arm's steps, the horizon the two are
                   # compared on (equal when it read the arm's batch at every step it took; it took ``steps``)
                   DATA_ORDER_FINGERPRINT: order_fingerprint(train_blocks, schedule, horizon)}
        if target is not None:
            summary.update(target_val_perplexity=target, stopped_at_target=progress.stopped_at_target,
                           steps_run=progress.step)
        trained = parallel.export_model()  # every process takes part (FSDP gathers the shards)
        if procs.is_main and trained is not None and initial is not None:
            change = group_change(initial, effective_weights(trained))
            summary["weight_change"], summary["weight_change_norm"] = change["relative"], change["absolute"]
        if procs.is_main:
            provenance["training"] = {
                "trainer": self.name, "version": self.version, "config": cfg.model_dump(mode="json"),
                "base_model": loaded.info, "seed": ctx.seed, "stage": ctx.stage.id, "summary": summary,
                "torch": torch.__version__, "transformers": _transformers_version(),
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            export_checkpoint(trained, tokenizer, ctx.checkpoint_dir, provenance, cfg.save_dtype)
        procs.barrier()
        return summary

    def target(self, ctx: StageContext, measure: Callable[[torch.nn.Module], tuple[float, int]]) -> tuple[float, int]:
        """``stop_at_perplexity_of``: the perplexity of that train entry's exported model at this seed (one of the
        stages this one waits for) as ``measure`` gives it (summed NLL, tokens on this stage's validation blocks,
        so the two are measured alike however the arm validated), and the arm's steps."""
        name = self.config.stop_at_perplexity_of
        found = [(sid, r) for sid, r in ctx.inputs.items() if (r.get("stage") or {}).get("section") == "train"
                 and r["stage"].get("entry") == name]
        if not found:
            raise HarnessError(f"train.{ctx.stage.entry}.stop_at_perplexity_of: '{name}' is not among the train "
                               f"stages this one waits for; fix: add `needs: [{name}]` to train.{ctx.stage.entry}")
        from transformers import AutoModelForCausalLM

        stage_id, result = found[0]
        # the export as the suite's model entries load it: safetensors only, no remote code
        arm = AutoModelForCausalLM.from_pretrained(ctx.input_dir(stage_id) / "checkpoint", dtype=torch.float32,
                                                   use_safetensors=True)
        nll, tokens = measure(arm)
        del arm
        return math.exp(nll / tokens), int(result["metrics"]["steps"])

    @staticmethod
    def _check_finite(what: str, value: float, step: int, total: int, snapshots: Snapshots) -> None:
        if math.isfinite(value):
            return
        steps = snapshots.steps()
        last = f"step {steps[-1]} in {snapshots.path(steps[-1])}" if steps else "none yet (no snapshot was written)"
        raise NonFiniteLoss(f"non-finite training {what} ({value}) at step {step + 1} of {total}; the last good "
                            f"training state is {last}; fix: lower `lr` or check the data and the starting weights")


class MonotonicTrainer(RecoveryTrainer[MonotonicConfig]):
    """Monotonic transform (non-negative FFN weights, W = softplus(V)) then the same recovery training."""

    name = "monotonic"
    default_config = "configs/monotonic.yaml"  # the published recipe (package data)

    def spec(self) -> MonotonicSpec:
        cfg = self.config
        return MonotonicSpec(variant=cfg.variant, init=cfg.init, min_weight=cfg.min_weight,
                             activation=cfg.monotone_activation if cfg.activation == "monotone" else "original",
                             constraint=cfg.constraint, stream_width=cfg.stream_width)

    def transform(self, model: torch.nn.Module, ctx: StageContext) -> tuple[torch.nn.Module, dict[str, Any]]:
        spec = self.spec()
        source_type = model.config.model_type
        model, names = transform_model(model, spec)
        provenance: dict[str, Any] = {"monotonic": spec.constraint != "none", **spec.as_dict(),
                                      "architecture": model.config.model_type}
        if model.config.model_type != source_type:
            provenance["converted_from"] = source_type
        # Under `none` the weights are free after the init: listed as initialised, not as constrained (the loader
        # verifies `constrained_weights` are non-negative).
        provenance["constrained_weights" if spec.constraint != "none" else "initialised_weights"] = names
        return model, provenance


def export_checkpoint(model: torch.nn.Module, tokenizer, out_dir, provenance: dict[str, Any], save_dtype: str) -> None:
    """A plain Hugging Face directory: merged weights (safetensors), config, tokenizer, and ``harness.json``."""
    merge(model)
    constrained = provenance.get("constrained_weights") or []
    bad = negative_entries(model, constrained)
    if bad:
        name, (count, low) = next(iter(bad.items()))
        raise HarnessError(f"monotonic export: {name} has {count} negative entries (min {low}) after training; this "
                           "is a bug in the transform, please report it")
    model.to(getattr(torch, save_dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    atomic_write_json(out_dir / "harness.json", {"format": 1, **provenance})


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


@hookimpl
def harness_trainers() -> list[type]:
    return [RecoveryTrainer, MonotonicTrainer]
