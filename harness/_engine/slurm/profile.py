"""The cluster profile: everything cluster-specific about a SLURM submission, in one small YAML file.

Nothing about a particular cluster lives in code. A profile names the partition/account, the resources of each
kind of job (train, metrics, attacks, report), the shell lines that prepare a job's environment (module loads,
conda activation), extra ``#SBATCH`` flags, how many seconds before the time limit SLURM warns a job, and how
training stages use more than one GPU. See ``slurm/profile.example.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...errors import ConfigError, HarnessError
from ...config import validated

_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # SLURM's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_MEM = re.compile(r"^\d+[KMGT]?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    """What one job asks for. Unset fields fall back to the profile's defaults (``null`` leaves the flag out)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    #: Wall-clock limit in a SLURM time format ("4:00:00", "2-00:00:00").
    time: str | None = None
    #: Memory per node ("64G"); ``null`` uses the cluster's default.
    mem: str | None = None
    cpus_per_task: int | None = Field(default=None, ge=1)
    #: GPUs on the job's node (``--gpus-per-node``); 0 asks for none.
    gpus: int | None = Field(default=None, ge=0)
    #: More ``#SBATCH`` lines for this kind of job only, e.g. ``--constraint=a100``.
    extra_sbatch: list[str] = Field(default_factory=list)

    @field_validator("time")
    @classmethod
    def _time(cls, value: str | None) -> str | None:
        if value is not None and not _TIME.match(value):
            raise ValueError(f"not a SLURM time limit: {value!r} (use H:M:S or D-H:M:S)")
        return value

    @field_validator("mem")
    @classmethod
    def _mem(cls, value: str | None) -> str | None:
        if value is not None and not _MEM.match(value):
            raise ValueError(f"not a SLURM memory size: {value!r} (use e.g. 64G or 4000M)")
        return value

    @field_validator("extra_sbatch")
    @classmethod
    def _flags(cls, value: list[str]) -> list[str]:
        for flag in value:
            if not flag.startswith("-") or "\n" in flag:
                raise ValueError(f"an sbatch flag must start with '-' and fit on one line, got {flag!r}")
        return value

    def over(self, base: Resources) -> Resources:
        """These resources with the unset fields taken from ``base`` (extra flags add up)."""
        merged = {name: getattr(self, name) if getattr(self, name) is not None else getattr(base, name)
                  for name in type(self).model_fields if name != "extra_sbatch"}
        return Resources(**merged, extra_sbatch=[*base.extra_sbatch, *self.extra_sbatch])


class Launcher(_Strict):
    """How a training stage uses the GPUs of its job: one process per GPU under torchrun or accelerate."""

    #: ``none`` runs one process (one GPU or CPU); ``torchrun`` / ``accelerate`` start ``nproc`` processes.
    kind: Literal["none", "torchrun", "accelerate"] = "none"
    #: ``ddp`` replicates the model (small models); ``fsdp`` shards weights, gradients and optimiser state (1.4B and
    #: up). The jobs export it as ``HARNESS_PARALLEL`` for the trainer (and pass accelerate ``--use_fsdp``).
    strategy: Literal["ddp", "fsdp"] = "ddp"
    #: Processes per job. ``null``: one per GPU SLURM allocated (``$SLURM_GPUS_ON_NODE``), else the job's ``gpus``.
    nproc: int | None = Field(default=None, ge=1)
    #: An accelerate config file (``accelerate launch --config_file``), for FSDP details such as wrapping policy.
    accelerate_config: Path | None = None
    #: Extra arguments for the launcher, e.g. ``["--max_restarts=0"]``.
    extra_args: list[str] = Field(default_factory=list)


class Profile(_Strict):
    #: Defaults for every job.
    defaults: Resources = Resources(time="4:00:00", cpus_per_task=4, gpus=0)
    #: Per kind of job: ``train``, ``metrics``, ``attacks`` and ``report`` (the final aggregation job).
    jobs: dict[Literal["train", "metrics", "attacks", "report"], Resources] = Field(default_factory=dict)
    #: Shell lines run at the top of every job, e.g. ``module load cuda/12.1``, ``source .venv/bin/activate``.
    setup: list[str] = Field(default_factory=list)
    #: Environment variables exported in every job (``HF_HUB_OFFLINE: "1"`` on offline compute nodes).
    env: dict[str, str] = Field(default_factory=dict)
    #: The Python that jobs run harness with (``<python> -m harness.cli``). ``null``: the one that submitted,
    #: which suits a shared filesystem; set ``python`` when ``setup`` activates an environment.
    python: str | None = None
    #: How a job asks for GPUs; ``{n}`` is the count. ``--gpus-per-node={n}`` needs select/cons_tres.
    gpu_flag: str = "--gres=gpu:{n}"
    #: A directory with your own ``stage.sbatch.tmpl`` / ``report.sbatch.tmpl`` (default: the shipped ones in
    #: ``harness/_engine/slurm/templates/``, installed with the package).
    templates: Path | None = None
    #: Directory jobs run in. ``null``: the directory ``harness slurm submit`` was called from.
    workdir: Path | None = None
    #: Seconds before the time limit (or on preemption notice) that SLURM sends USR1, so the stage checkpoints.
    signal_lead_s: int = Field(default=300, ge=10)
    #: After the stage checkpointed on USR1/TERM, put the job back in the queue (``scontrol requeue``).
    requeue: bool = True
    #: Seeds of one stage entry become one job array (``--array``) when their dependencies allow.
    arrays: bool = True
    #: Training stages: multi-process launch.
    launcher: Launcher = Launcher()
    #: The GPU model the jobs get (a `harness plan --gpu` name: H100, A100-80GB, ...): submission checks every
    #: job's time limit against the stage's planned time on it. ``null``: H100 (the plan's default) is assumed.
    gpu_type: str | None = None
    #: How many times a stage longer than its job's time limit may checkpoint at the limit and be requeued to go
    #: on (needs ``requeue: true``): submission splits such a stage into that many more job runs, and refuses one
    #: that would need more. 0: every stage must finish within one time limit.
    max_requeues: int = Field(default=0, ge=0)

    @field_validator("gpu_type")
    @classmethod
    def _gpu_type(cls, value: str | None) -> str | None:
        from ..plan.hardware import GPUS, accelerator

        if value is None:
            return None
        if value.lower() == "cpu":
            raise ValueError("gpu_type names the jobs' GPU model; for jobs without GPUs leave it out")
        try:
            return accelerator(value).name
        except HarnessError:
            raise ValueError(f"unknown GPU {value!r}; use one of {', '.join(GPUS)}") from None

    @field_validator("gpu_flag")
    @classmethod
    def _gpu_flag(cls, value: str) -> str:
        if not value.startswith("-") or "{n}" not in value:
            raise ValueError(f"must be an sbatch flag with {{n}} for the GPU count, got {value!r}")
        return value

    def resources(self, kind: str) -> Resources:
        own = next((res for job, res in self.jobs.items() if job == kind), None)  # kind: any job kind's name
        return own.over(self.defaults) if own is not None else self.defaults


def load_profile(path: Path | None) -> Profile:
    """The profile in ``path`` (validated; relative paths in it are relative to it), or the defaults."""
    if path is None:
        return Profile()
    path = Path(path).resolve()
    if not path.exists():
        raise ConfigError(path, "", "cluster profile not found", "check the path (see slurm/profile.example.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"invalid YAML: {str(exc).splitlines()[0]}", "fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError(path, "", "a profile must be a mapping", "write `key: value` pairs at the top level")
    profile = validated(Profile, data, path, "profile", "slurm profile")
    updates: dict[str, object] = {}
    for name in ("workdir", "templates"):
        value = getattr(profile, name)
        if value is not None and not value.is_absolute():
            updates[name] = (path.parent / value).resolve()
    config = profile.launcher.accelerate_config
    if config is not None and not config.is_absolute():
        absolute = (path.parent / config).resolve()
        updates["launcher"] = profile.launcher.model_copy(update={"accelerate_config": absolute})
    return profile.model_copy(update=updates)
