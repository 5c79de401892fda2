"""Do the profile's jobs fit their stages? GPUs where the plan needs one, time limits above the planned time.

Checked by ``harness slurm submit`` (dry run or not) for every stage it is about to give a job, so that no job sits
on a CPU for days or is killed at its time limit hours into a stage:

- a stage **needs a GPU** when the suite (or its model) says ``device: cuda``, or, under ``device: auto`` (which
  resolves to cuda on a GPU node), when its planned work is GPU-sized: at least ``GPU_FLOPS`` FLOPs, a model of at
  least ``GPU_PARAMS`` parameters, or no estimate for a model that comes from the hub. ``device: cpu`` needs none.
  Its kind of job must then get GPUs from the profile (``jobs.<kind>.gpus`` or ``defaults.gpus``);
- a stage that runs on GPUs must finish within its job's time limit: planned wall time on the profile's
  ``gpu_type`` times ``TIME_MARGIN`` <= ``jobs.<kind>.time``. A longer one is split into requeued runs (each
  checkpoints at the limit and the next resumes) when the profile allows enough of them (``requeue: true``,
  ``max_requeues``), else refused.

A refusal is one line: the first stage that does not fit, the profile key and the fix, and how many more do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...errors import HarnessError
from ..graph import Stage
from ..suite import Suite

#: Planned FLOPs from which a stage is GPU work under ``device: auto`` (1 PFLOP: about an hour at the fp32 matmul
#: rate of a large CPU node, 0.3 TFLOP/s, and seconds on one GPU).
GPU_FLOPS = 1e15
#: Model size from which every stage on it is GPU work under ``device: auto`` (100M parameters and up).
GPU_PARAMS = 1e8


@dataclass
class Fit:
    #: Stages split into requeued runs: stage id -> runs planned (each within the time limit).
    split: dict[str, int] = field(default_factory=dict)
    #: stage id -> why it needs a GPU (only stages that do).
    gpu: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _explicit_device(suite: Suite, model: str) -> str:
    own = getattr(suite.models[model].config, "device", None)
    return own if isinstance(own, str) and own != "auto" else suite.device


def gpu_reason(suite: Suite, est: Any, shape: Any) -> str:
    """Why the stage of plan estimate ``est`` (on a model of ``shape``, None when unknown) needs a GPU on the
    cluster ("" when it does not)."""
    from ..plan.estimate import root_model

    stage: Stage = est.stage
    device = _explicit_device(suite, stage.model)
    if device.startswith("cuda"):
        return f"device '{device}'"
    if device == "cpu":
        return ""
    if est.flops >= GPU_FLOPS:
        return f"device auto, {est.flops:.1e} FLOPs planned"
    root = suite.models[root_model(suite, stage.model)]
    source = root.plugin.cls(root.config).weights_source()
    if shape is not None and shape.n_params >= GPU_PARAMS:
        return f"device auto, a {shape.n_params / 1e9:.2g}B-parameter model"
    if est.workload is None and source is not None and not source.local:
        return f"device auto, hub model {source.ref} (no estimate)"
    return ""


def _where(profile_path: Any) -> str:
    return f"profile {profile_path}" if profile_path is not None else "no --profile: the default profile"


def check_fit(suite: Suite, profile: Any, profile_path: Any, stages: list[Stage]) -> Fit:
    """The stages' jobs against ``profile``; raises :class:`HarnessError` (one line) when one does not fit."""
    from ..plan.estimate import TIME_MARGIN, hours_text, make_plan, slurm_time_with_margin
    from ..plan.hardware import DEFAULT_GPU, accelerator, slurm_seconds

    fit = Fit()
    if not stages:
        return fit
    gpu_name = profile.gpu_type or DEFAULT_GPU
    plan = make_plan(suite, accelerator(gpu_name), profile=profile, stages=stages, measure_tokens=False)
    where = _where(profile_path)
    problems: dict[str, str] = {}  # entry group (stage id without the seed) -> its first problem
    for est in plan.stages:
        sid, kind = est.stage.id, est.stage.section
        group = sid.rsplit("/", 1)[0] if est.stage.seeded else sid
        res = profile.resources(kind)
        reason = gpu_reason(suite, est, plan.models[est.stage.model].shape)
        if reason:
            fit.gpu[sid] = reason
            if not res.gpus:
                problems.setdefault(group, (
                    f"stage {sid} needs a GPU ({reason}) but {kind} jobs get none ({where}: jobs.{kind}.gpus, "
                    f"defaults.gpus); fix: pass --profile with `gpus:` for {kind} jobs (copy "
                    "slurm/profile.example.yaml), or set `device: cpu` in the suite to run it on CPUs"))
                continue
        if not res.gpus or not res.time or est.workload is None:
            continue  # CPU jobs: no planned time to compare (the plan times CPUs only on this machine)
        limit_h = slurm_seconds(res.time) / 3600
        needed_h = est.wall_hours * TIME_MARGIN
        if needed_h <= limit_h:
            continue
        runs = math.ceil(needed_h / limit_h)
        if profile.requeue and runs - 1 <= profile.max_requeues:
            fit.split[sid] = runs
            continue
        allow = (f"allow {runs - 1} requeues (`max_requeues: {runs - 1}`, `requeue: true`) to split it"
                 if runs - 1 <= 20 else "split the stage's work")
        more_gpus = ", give train jobs more GPUs" if kind == "train" else ""
        problems.setdefault(group, (
            f"stage {sid}: planned ~{hours_text(est.wall_hours)} on {gpu_name} x{est.processes} "
            f"(+{TIME_MARGIN - 1:.0%} margin: {hours_text(needed_h)}) exceeds the {kind} jobs' time limit {res.time} "
            f"({where}: jobs.{kind}.time); fix: set jobs.{kind}.time >= {slurm_time_with_margin(est.wall_hours)}"
            f"{more_gpus}, or {allow}"))
    if problems:
        first, *rest = problems.values()
        if rest:
            named = ", ".join(list(problems)[1:4]) + (", ..." if len(rest) > 3 else "")
            first += f" ({len(rest)} more stage entries do not fit either: {named})"
        raise HarnessError(first)
    if fit.split:
        shown = ", ".join(f"{s} x{n}" for s, n in list(fit.split.items())[:3]) + (", ..." if len(fit.split) > 3 else "")
        fit.notes.append(f"{len(fit.split)} stage(s) longer than their time limit run as requeued slices "
                         f"(max_requeues {profile.max_requeues}): {shown}")
    fit.notes.append(f"time limits checked against the plan on {gpu_name} (profile `gpu_type`) with a "
                     f"{TIME_MARGIN - 1:.0%} margin")
    return fit
