"""The plan: every stage's workload (from its plugin) turned into FLOPs, GPU-hours, peak memory and disk.

For each stage of the suite's graph (each seed included)::

    shape    = the evaluated model's config (its training's starting model for a trained one)
    workload = plugin.plan(PlanInputs(shape, dtype, device, processes, documents))   # None: "no estimate"
    FLOPs    = (2·N + 2·L·ctx·h) x (forward tokens + 3 x gradient tokens + 3 x training tokens)
    GPU-h    = FLOPs / (peak x MFU) / 3600;   wall = GPU-h / GPUs of the job (training under torchrun only)
               on cpu: calls x seconds per call, each call timed now on a random-weight model (.calibrate)
    memory   = the largest of the stage's passes (harness._engine.plan.memory); training also with checkpointing toggled
    disk     = what the plugin says it keeps

and warnings where a stage does not fit the accelerator's memory or the profile's time limit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from ...data import document_sources
from ...env import package_versions
from ..graph import Stage, build_graph
from ..suite import Suite
from ...workload import ModelShape, NoEstimate, PlanInputs, Workload
from .calibrate import Call, CallTimer
from .documents import DEFAULT_CHARS_PER_TOKEN, DocumentCounter, chars_per_token, local_texts
from .hardware import Accelerator, slurm_bytes, slurm_seconds
from .memory import USABLE, Memory, largest_micro_batch, pass_memory, training_memory
from .shapes import lookup_shape

log = logging.getLogger("harness")

#: The optimiser, gradient and backward passes cost twice the forward pass: training is 3x forward per token.
BACKWARD_FACTOR = 2
DEFAULT_MFU = 0.35
#: A job's time limit must cover its planned wall time times this: the plan leaves out model loading, tokenisation
#: and checkpoint writes, and a cluster's GPUs rarely reach the planned MFU every hour.
TIME_MARGIN = 1.25
VERSIONS = ("torch", "transformers", "datasets", "lm_eval", "accelerate")


@dataclass
class ModelInfo:
    name: str
    #: The model entry whose config gives the shape (itself, or the start of the training that makes it).
    root: str
    shape: ModelShape | None
    reason: str
    dtype: str
    tokenizer: Any = None
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    chars_per_token_how: str = ""


@dataclass
class StageEstimate:
    stage: Stage
    workload: Workload | None = None
    #: Why there is no estimate (when ``workload`` is None).
    reason: str = ""
    flops: float = 0.0
    gpu_hours: float = 0.0
    #: Processes (GPUs) the stage's job uses; wall hours = GPU-hours / processes.
    processes: int = 1
    memory: Memory | None = None
    #: Training: the same micro-batch with gradient checkpointing the other way round.
    memory_toggled: Memory | None = None
    #: Training: the largest micro-batch that fits, without and with gradient checkpointing.
    max_micro_batch: dict[bool, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: How the time was estimated: ``formula`` (FLOPs / (peak x MFU)) or ``measured calls`` (cpu, timed now).
    time_how: str = "formula"

    @property
    def wall_hours(self) -> float:
        return self.gpu_hours / self.processes

    @property
    def disk_bytes(self) -> float:
        return self.workload.disk_bytes if self.workload else 0.0


@dataclass
class Plan:
    suite: Suite
    accelerator: Accelerator
    mfu: float
    profile: Any  # harness._engine.slurm.profile.Profile | None
    profile_path: str | None
    models: dict[str, ModelInfo]
    stages: list[StageEstimate]
    assumptions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def flops(self) -> float:
        return sum(s.flops for s in self.stages)

    @property
    def disk_bytes(self) -> float:
        return sum(s.disk_bytes for s in self.stages)

    @property
    def missing(self) -> list[StageEstimate]:
        return [s for s in self.stages if s.workload is None]


def flops_per_token(shape: ModelShape, context: int) -> float:
    """Forward FLOPs per token (Kaplan et al. 2020): 2 per weight it meets, plus attention over ``context``."""
    return 2 * shape.compute_params + 2 * shape.n_layers * context * shape.hidden


def workload_flops(shape: ModelShape, w: Workload) -> float:
    """FLOPs the hardware executes; gradient checkpointing recomputes the forward pass once more in training."""
    forward = flops_per_token(shape, w.context)
    train = 1 + BACKWARD_FACTOR + (1 if w.training is not None and w.training.gradient_checkpointing else 0)
    return forward * (w.forward_tokens + (1 + BACKWARD_FACTOR) * w.gradient_tokens + train * w.train_tokens)


def call_seconds(shape: ModelShape, w: Workload, timer: CallTimer) -> float | None:
    """Compute seconds of a workload from timed calls: per kind of pass, ``calls x fixed + tokens x per token`` of
    its largest batch's kind of call; calls as the plugin counts them, else ``ceil(tokens / batch tokens)`` (a
    lower bound where a stage also runs smaller batches). None if a call is not timed."""
    total = 0.0
    for kind, tokens, calls in (("none", w.forward_tokens, w.forward_calls),
                                ("inputs", w.gradient_tokens, w.gradient_calls), ("weights", w.train_tokens, None)):
        if not tokens:
            continue
        batch = max((b for b in w.batches if b.backward == kind), key=lambda b: b.tokens, default=None)
        if batch is None:
            return None
        cost = timer.cost(shape, Call.of(batch, w.training))
        if cost is None:
            return None
        total += (calls or math.ceil(tokens / batch.tokens)) * cost.fixed + tokens * cost.per_token
    return total


# -- models -------------------------------------------------------------------------------------------------------------
def root_model(suite: Suite, name: str) -> str:
    """The model entry whose weights ``name``'s come from: itself, or the start of the training that makes it."""
    entry = suite.models[name]
    while entry.from_train is not None:
        base = suite.train[entry.from_train].model
        assert base is not None, "load_suite checks that every train entry names its model"
        name = base
        entry = suite.models[name]
    return name


def _load_tokenizer(source: Any) -> Any:
    """The model's tokenizer when it can be read offline (local directory or cache), else None."""
    if source is None or source.gguf_file:
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source.ref, revision=source.revision, local_files_only=True)
    except Exception:  # any failure only means "no tokenizer here": the plan assumes characters per token
        return None


def resolve_models(suite: Suite, measure_tokens: bool = True) -> dict[str, ModelInfo]:
    infos: dict[str, ModelInfo] = {}
    roots: dict[str, ModelInfo] = {}
    sample = _first_local_texts(suite) if measure_tokens else []
    for name, entry in suite.models.items():
        root = root_model(suite, name)
        if root not in roots:
            source = suite.models[root].plugin.cls(suite.models[root].config).weights_source()
            lookup = lookup_shape(source, root)
            info = ModelInfo(root, root, lookup.shape, lookup.reason, source.dtype if source else "float32",
                             _load_tokenizer(source) if measure_tokens else None)
            if info.tokenizer is not None and sample:
                info.chars_per_token, info.chars_per_token_how = chars_per_token(sample, info.tokenizer)
            roots[root] = info
        base = roots[root]
        own = entry.plugin.cls(entry.config).weights_source()  # a trained model's own dtype
        dtype = own.dtype if own is not None else base.dtype
        if dtype == "auto" and base.shape is not None:
            dtype = base.shape.dtype
        infos[name] = ModelInfo(name, root, base.shape, base.reason, dtype, base.tokenizer, base.chars_per_token,
                                base.chars_per_token_how)
    return infos


def _first_local_texts(suite: Suite) -> list[str]:
    """Texts of the suite's first local document source: the sample that characters per token are measured on."""
    for section in ("train", "metrics", "attacks"):
        for entry in suite.section(section).values():
            for _, source in document_sources(entry.config, entry.key):
                if source.data_files:
                    try:
                        return local_texts(source)
                    except (OSError, ValueError, KeyError):
                        continue
    return []


# -- stages -------------------------------------------------------------------------------------------------------------
def training_processes(profile: Any) -> int:
    """GPUs one training stage runs on: the train jobs' GPUs under a multi-process launcher, else 1."""
    if profile is None or profile.launcher.kind == "none":
        return 1
    return profile.launcher.nproc or max(1, profile.resources("train").gpus or 1)


def dependencies(stage: Stage, suite: Suite, by_id: dict[str, Stage]) -> dict[str, dict[str, Any]]:
    """What the run will hand the stage about its inputs (their stage and config; results do not exist yet)."""
    out = {}
    for dep_id in stage.deps:
        dep = by_id[dep_id]
        entry = suite.section(dep.section)[dep.entry]
        out[dep_id] = {"stage": dep.as_dict(), "plugin": entry.plugin.name,
                       "config": entry.config.model_dump(mode="json")}
    return out


def estimate_stage(stage: Stage, suite: Suite, info: ModelInfo, accel: Accelerator, mfu: float, profile: Any,
                   counter: DocumentCounter, by_id: dict[str, Stage] | None = None,
                   timer: CallTimer | None = None) -> StageEstimate:
    entry = suite.section(stage.section)[stage.entry]
    processes = training_processes(profile) if stage.section == "train" else 1
    est = StageEstimate(stage, processes=processes)
    if info.shape is None:
        est.reason = info.reason
        return est
    plugin = entry.build()
    inputs = PlanInputs(shape=info.shape, dtype=info.dtype, device=accel.device, processes=processes,
                        chars_per_token=info.chars_per_token,
                        documents=lambda source: counter.stats(source, info.tokenizer),
                        dependencies=dependencies(stage, suite, by_id or {}))
    try:
        workload = plugin.plan(inputs)
    except NoEstimate as exc:
        est.reason = f"no estimate: {exc}"
        return est
    except Exception as exc:  # an estimate must never stop a run; say what went wrong instead
        log.debug("plan of %s failed", stage.id, exc_info=True)
        est.reason = f"no estimate: the plugin's plan failed ({type(exc).__name__}: {exc})"
        return est
    if workload is None:
        est.reason = f"no estimate: plugin '{entry.plugin.name}' does not describe its workload (no `plan` method)"
        return est
    est.workload = workload
    est.flops = workload_flops(info.shape, workload)
    est.gpu_hours = est.flops / (accel.peak_tflops * 1e12 * mfu) / 3600
    seconds = call_seconds(info.shape, workload, timer) if timer is not None and accel.device == "cpu" else None
    if seconds is not None:
        est.gpu_hours, est.time_how = seconds / 3600, "measured calls"
    shards = processes if (profile is not None and profile.launcher.strategy == "fsdp") else 1
    peaks = [pass_memory(info.shape, info.dtype, b) for b in workload.batches if b.backward != "weights"]
    if workload.training is not None:
        setup = workload.training
        peaks.append(training_memory(info.shape, setup, shards=shards))
        est.memory_toggled = training_memory(info.shape, setup, checkpointing=not setup.gradient_checkpointing,
                                             shards=shards)
        capacity = accel.memory_gb * 1e9 * USABLE
        est.max_micro_batch = {ckpt: largest_micro_batch(info.shape, setup, capacity, ckpt, shards)
                               for ckpt in (False, True)}
    est.memory = max(peaks, key=lambda m: m.total) if peaks else None
    return est


def _gb(x: float) -> str:
    return f"{x / 1e9:,.1f} GB"


def hours_text(h: float) -> str:
    return f"{h:,.1f} h" if h >= 1 else f"{h * 60:,.0f} min" if h * 60 >= 1 else f"{h * 3600:,.0f} s"


def stage_warnings(est: StageEstimate, accel: Accelerator, profile: Any, profile_path: str | None) -> list[str]:
    out: list[str] = []
    sid = est.stage.id
    capacity = accel.memory_gb * 1e9 * USABLE
    if est.memory is not None and est.memory.total > capacity:
        where = f"one {accel.name} ({_gb(capacity)} usable of {accel.memory_gb:g} GB)"
        w = est.workload
        if w is not None and w.training is not None:
            setup = w.training
            plain, ckpt = est.max_micro_batch.get(False, 0), est.max_micro_batch.get(True, 0)
            if ckpt == 0:
                fix = "even micro_batch 1 does not fit: shard it (launcher.strategy: fsdp) or use a larger GPU"
            elif plain > 0 and not setup.gradient_checkpointing:
                fix = (f"micro_batch <= {plain} (grad_accum x{-(-setup.micro_batch // plain)} keeps the batch), or "
                       f"gradient_checkpointing: true with micro_batch <= {ckpt}")
            else:
                fix = f"gradient_checkpointing: true with micro_batch <= {ckpt}"
            out.append(f"{sid}: needs ~{_gb(est.memory.total)} on {where}; fix: {fix}")
        else:
            out.append(f"{sid}: needs ~{_gb(est.memory.total)} on {where}; fix: lower its batch size "
                       "(batch_tokens / batch_size)")
    if profile is None or accel.device != "cuda":
        return out
    kind = est.stage.section
    res = profile.resources(kind)
    if not res.gpus:
        out.append(f"{sid}: the profile's {kind} jobs ask for no GPU ({profile_path}: jobs.{kind}.gpus); the stage "
                   "would run on the CPU")
    if res.time and est.workload is not None:
        limit = slurm_seconds(res.time) / 3600
        if est.wall_hours > limit:
            cycles = int(est.wall_hours // limit)
            then = (f"with `requeue: true` it checkpoints and is requeued ~{cycles} time(s)" if profile.requeue
                    else "it is killed at the limit (`requeue: false`)")
            out.append(f"{sid}: ~{hours_text(est.wall_hours)} per job exceeds the {kind} jobs' time limit "
                       f"{res.time} ({profile_path}); {then}; fix: raise jobs.{kind}.time to >= "
                       f"{slurm_time_with_margin(est.wall_hours)}"
                       + (" or give it more GPUs" if kind == "train" else ""))
    if kind == "train" and res.mem and est.workload is not None and est.workload.training is not None:
        # Resuming loads the fp32 weights and AdamW state on the CPU in every process (torch.load to CPU).
        setup = est.workload.training
        host = est.processes * (4 * est.workload.training.trainable_params
                                + setup.optimizer_bytes_per_param * setup.trainable_params)
        if host > slurm_bytes(res.mem):
            out.append(f"{sid}: resuming loads ~{_gb(host)} of training state into host memory ({est.processes} "
                       f"process(es)), more than jobs.train.mem {res.mem} ({profile_path}); fix: raise it")
    return out


def collapse_seeds(stages: list[StageEstimate]) -> list[str]:
    """Warnings of one entry on one model that differ only by seed, said once: ``train/monotonic (5 seeds): ...``."""
    runs: dict[str, int] = {}
    for est in stages:
        group = est.stage.id.rsplit("/", 1)[0] if est.stage.seeded else est.stage.id
        runs[group] = runs.get(group, 0) + 1
    out: dict[str, None] = {}
    for est in stages:
        group = est.stage.id.rsplit("/", 1)[0] if est.stage.seeded else est.stage.id
        label = f"{group} ({runs[group]} seeds)" if est.stage.seeded and runs[group] > 1 else est.stage.id
        for warning in est.warnings:
            out[warning.replace(est.stage.id, label, 1)] = None
    return list(out)


def slurm_time_with_margin(hours: float) -> str:
    total = int(hours * TIME_MARGIN * 3600) + 1
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    return (f"{days}-" if days else "") + f"{h:02d}:{rest // 60:02d}:00"


def make_plan(suite: Suite, accel: Accelerator, mfu: float = DEFAULT_MFU, profile: Any = None,
              profile_path: str | None = None, doc_tokens: float | None = None, stages: list[Stage] | None = None,
              measure_tokens: bool = True, timer: CallTimer | None = None) -> Plan:
    """The plan for ``stages`` (default: every stage of the suite). ``measure_tokens=False`` skips loading
    tokenizers (characters per token assumed): enough for the pre-flight disk estimate. With a ``timer`` and a
    ``cpu`` accelerator, stage times come from calls timed on this machine (:mod:`.calibrate`)."""
    models = resolve_models(suite, measure_tokens)
    counter = DocumentCounter(doc_tokens)
    graph = build_graph(suite)
    by_id = graph.by_id()
    stages = stages if stages is not None else graph.stages
    versions = {k: v for k, v in package_versions().items() if k in VERSIONS}
    plan = Plan(suite, accel, mfu, profile, profile_path, models, [], versions=versions)
    for stage in stages:
        est = estimate_stage(stage, suite, models[stage.model], accel, mfu, profile, counter, by_id, timer)
        est.warnings = stage_warnings(est, accel, profile, profile_path)
        plan.stages.append(est)
    plan.warnings = collapse_seeds(plan.stages)
    plan.assumptions = assumptions(plan, counter, timer)
    return plan


def assumptions(plan: Plan, counter: DocumentCounter, timer: CallTimer | None = None) -> list[str]:
    a = plan.accelerator
    lines = [
        f"accelerator: {a.name}, {a.peak_tflops:,.3g} TFLOP/s peak ({a.note}), {a.memory_gb:,.0f} GB; model FLOPs "
        f"utilisation (MFU) {plan.mfu:g}: GPU-hours = FLOPs / (peak x MFU)",
        "FLOPs per token: 2·N + 2·L·ctx·h forward (N: weights a token meets, i.e. all but the input embedding; "
        "Kaplan et al. 2020); training and gradient passes 3x forward (backward = 2x forward), 4x with gradient "
        "checkpointing (the forward pass again); attack queries and evaluation forward only",
        "memory per process: fp32 master weights + gradients + AdamW state (16 bytes/parameter) + bf16 weight copies "
        "under autocast; activations 17·h values per token per layer (Korthikanti et al. 2022, fused attention), "
        "1·h per layer + one layer with gradient checkpointing; logits 16 bytes per token and vocabulary entry; a "
        f"stage fits when its peak is <= {USABLE:.0%} of the accelerator's memory",
        "training on cuda: bf16 autocast (the trainers' precision: auto); on cpu: fp32",
        "wall time: GPU-hours / GPUs of the job (training under a multi-process launcher scales linearly; "
        "evaluation and attacks use one GPU); model loading, tokenisation and checkpoint writes are not counted",
    ]
    if timer is not None and a.device == "cpu":
        timed = sum(s.time_how == "measured calls" for s in plan.stages)
        lines.append(f"cpu time: {timed} of {len(plan.stages)} stages timed by their calls, run now on random-weight "
                     f"models of the same shapes ({timer.threads or 'default'} threads; median of up to 5 warm "
                     "runs of each stage's largest batch of each kind and of one row: seconds = calls x fixed cost + "
                     "tokens x cost per token; calls as the plugin counts them, else tokens / batch tokens); setup "
                     "(lm-eval's task building), tokenisation and Python work between calls are not counted; the "
                     "rest by the formula")
    if plan.profile is not None:
        lines.append(f"cluster profile: {plan.profile_path} (time limits, GPUs per job, launcher "
                     f"{plan.profile.launcher.kind}/{plan.profile.launcher.strategy})")
    seen: set[str] = set()
    for info in plan.models.values():
        if info.shape is not None and info.root == info.name and info.shape.source not in seen:
            seen.add(info.shape.source)
            lines.append(f"shape of {info.name}: {info.shape.source}")
        if info.tokenizer is not None and info.chars_per_token_how and info.root == info.name:
            lines.append(f"tokens of {info.name}: {info.chars_per_token_how}")
    for stats in dict.fromkeys(s.how for s in counter._cache.values()):  # first use first, the same every run
        lines.append(f"documents: {stats}")
    lines.append("library versions: " + ", ".join(f"{k} {v}" for k, v in plan.versions.items() if v))
    return lines
