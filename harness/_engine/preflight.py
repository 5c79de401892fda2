"""Pre-flight checks ("stage 0"): the cheap things that would otherwise fail hours into a run.

Run at the start of ``harness run`` and ``harness slurm submit`` (``--skip-preflight`` skips them), in this order:

1. the run directory can be created and written, and its filesystem has room for the plan's disk estimate of the
   stages still to run (checkpoints kept, caches, records); no stage's planned peak memory exceeds this machine's
   (the GPU's, else RAM);
2. a GPU is visible when the suite (or a model) asks for ``device: cuda``; for a SLURM submission, the profile gives
   those jobs GPUs instead (the login node needs none);
3. every model and dataset the stages use can be reached: each plugin's own ``preflight`` (weights in a local
   directory, in the Hugging Face cache, or a reachable hub) and every document source in the configs (local files,
   the datasets cache when offline, else the hub). A SLURM profile's ``env`` (``HF_HUB_OFFLINE: "1"``) applies, so
   what the compute nodes will not be able to download is caught on the login node;
4. library versions, recorded with the results in ``RUN_DIR/preflight.json``.

Each failure is one :class:`HarnessError` line with the fix (the CLI exits with status 2).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data import check_source, document_sources
from ..env import package_versions, restored_environ
from ..errors import HarnessError
from .graph import Stage, build_graph
from ..store import atomic_write_json
from .suite import Suite

log = logging.getLogger("harness")

#: Environment variables of a profile that change what can be reached (the rest, e.g. HF_HOME, are read by the
#: libraries once at import and are not simulated here).
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class Preflight:
    run_dir: str
    free_bytes: float = 0.0
    needed_bytes: float | None = None
    checks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Failures, when not strict (a dry run): one line each, with the fix.
    problems: list[str] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".preflight-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise HarnessError(f"run directory {run_dir} is not writable ({type(exc).__name__}: {exc.strerror or exc}); "
                           "fix: pass --out with a writable directory (e.g. on scratch) or set `output_dir:` in the "
                           "suite") from None


def _gb(x: float) -> str:
    for factor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if x >= factor:
            return f"{x / factor:,.1f} {unit}"
    return f"{x:,.0f} bytes"


def check_space(run_dir: Path, needed: float, biggest: str) -> float:
    free = shutil.disk_usage(run_dir).free
    if needed > free:
        raise HarnessError(f"not enough free space for this run in {run_dir}: {_gb(free)} free, the plan estimates "
                           f"~{_gb(needed)} ({biggest}); fix: pass --out on a larger filesystem (scratch), lower "
                           "`keep_checkpoints`, or free space (`harness plan` shows the estimate)")
    return free


def _cuda_requests(suite: Suite) -> list[tuple[str, str]]:
    """(suite key, device) of every explicit cuda device: the suite's and the models' own ``device:``."""
    found = [("device", suite.device)] if suite.device.startswith("cuda") else []
    for entry in suite.models.values():
        device = getattr(entry.config, "device", None)
        if isinstance(device, str) and device.startswith("cuda"):
            found.append((f"{entry.key}.device", device))
    return found


def check_gpu(suite: Suite) -> str:
    import torch

    wanted = _cuda_requests(suite)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for key, device in wanted:
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= visible:
            build = torch.version.cuda or "none: a CPU-only build"
            seen = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise HarnessError(
                f"{suite.path}: {key}: '{device}' asked for, but {visible} GPU(s) are visible here (torch "
                f"{torch.__version__}, CUDA {build}" + (f", CUDA_VISIBLE_DEVICES={seen}" if seen is not None else "")
                + "); fix: run on a GPU node (SLURM: give the jobs GPUs in the profile), install a CUDA build of "
                "torch, or set `device: auto` (uses the CPU when there is no GPU)")
    if visible:
        return f"{visible} GPU(s) visible: {torch.cuda.get_device_name(0)}"
    return "no GPU visible: device auto runs on the CPU" if not wanted else ""


def check_profile_gpus(suite: Suite, profile: Any, profile_path: Any, stages: list[Stage]) -> None:
    if not _cuda_requests(suite):
        return
    for kind in sorted({s.section for s in stages}):
        if not profile.resources(kind).gpus:
            raise HarnessError(f"{profile_path}: jobs.{kind}.gpus: the suite asks for device '{suite.device}' but "
                               f"the profile gives {kind} jobs no GPU; fix: set `gpus:` for them (or in `defaults:`), "
                               "or use `device: auto`")


@contextmanager
def offline_env(env: dict[str, str]) -> Iterator[None]:
    """The profile's offline switches, set while the reachability checks run."""
    with restored_environ(OFFLINE_VARS):
        for key in OFFLINE_VARS:
            if key in env:
                os.environ[key] = env[key]
        yield


def check_reachable(suite: Suite, stages: list[Stage]) -> list[str]:
    """Each plugin's own check and every document source of the stages to run; returns what was checked."""
    from .plan.estimate import root_model

    checked: list[str] = []
    for name in dict.fromkeys(root_model(suite, s.model) for s in stages):
        entry = suite.models[name]
        entry.plugin.cls(entry.config).preflight(entry.key)
        checked.append(entry.key)
    for key in dict.fromkeys((s.section, s.entry) for s in stages):
        entry = suite.section(key[0])[key[1]]
        entry.build().preflight(entry.key)
        for where, source in document_sources(entry.config, entry.key):
            check_source(source, where)
            checked.append(where)
    return checked


def machine_memory() -> tuple[float, str]:
    """(bytes, what) of the memory a stage runs in here: the first GPU's, else the machine's RAM."""
    import torch

    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory), f"GPU memory ({torch.cuda.get_device_name(0)})"
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), "RAM"


def local_plan(suite: Suite, stages: list[Stage]) -> Any:
    """The plan of ``stages`` on this machine (its disk and peak memory; the speed is not needed here)."""
    import torch

    from .plan.estimate import make_plan
    from .plan.hardware import Accelerator

    # Disk does not depend on the accelerator's speed; its device only picks the training precision.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    memory, _ = machine_memory()
    return make_plan(suite, Accelerator("this machine", 1.0, memory / 1e9, device=device), stages=stages,
                     measure_tokens=False)


def disk_needed(suite: Suite, stages: list[Stage], plan: Any = None) -> tuple[float | None, str, list[str]]:
    """(bytes the plan expects these stages to leave, the biggest one, stages without an estimate)."""
    plan = plan if plan is not None else local_plan(suite, stages)
    estimated = [s for s in plan.stages if s.workload is not None]
    if not estimated:
        return None, "", [s.stage.id for s in plan.stages]
    biggest = max(estimated, key=lambda s: s.disk_bytes)
    return (plan.disk_bytes, f"largest: {biggest.stage.id} ~{_gb(biggest.disk_bytes)}",
            [s.stage.id for s in plan.missing])


def check_memory(plan: Any) -> str:
    """Refuse a stage whose planned peak memory exceeds this machine's (it would be killed, or swap for hours)."""
    capacity, what = machine_memory()
    worst = max((s for s in plan.stages if s.memory is not None), key=lambda s: s.memory.total, default=None)
    if worst is None:
        return ""
    if worst.memory.total > capacity:
        parts = ", ".join(f"{k} {_gb(v)}" for k, v in sorted(worst.memory.parts.items(), key=lambda kv: -kv[1])[:3])
        raise HarnessError(f"stage {worst.stage.id}: the plan's peak memory is ~{_gb(worst.memory.total)} ({parts}), "
                           f"more than this machine's {_gb(capacity)} of {what}; fix: lower its batch size "
                           "(`micro_batch`, `batch_tokens`, ...; `harness plan` shows the numbers) or pass "
                           "--skip-preflight to try anyway")
    return f"memory: peak ~{_gb(worst.memory.total)} ({worst.stage.id}) of {_gb(capacity)} {what}"


def run_preflight(suite: Suite, run_dir: Path, stages: list[Stage] | None = None, done: set[str] | None = None,
                  profile: Any = None, profile_path: Any = None, strict: bool = True) -> Preflight:
    """All checks for running ``stages`` (default: every stage) of ``suite`` into ``run_dir``, minus those in
    ``done``. With a SLURM ``profile`` the GPU check asks the profile, and its offline switches apply. ``strict``:
    the first failure raises; otherwise (a dry run) failures are collected in ``problems``."""
    run_dir = Path(run_dir)
    stages = stages if stages is not None else build_graph(suite).stages
    todo = [s for s in stages if s.id not in (done or set())]
    result = Preflight(str(run_dir), versions=package_versions())

    def check(what) -> None:
        try:
            what()
        except HarnessError as exc:
            if strict:
                raise
            result.problems.append(str(exc))

    def writable() -> None:
        check_writable(run_dir)
        result.checks.append(f"run directory writable: {run_dir}")

    def space() -> None:
        try:
            plan = local_plan(suite, todo)
            needed, biggest, missing = disk_needed(suite, todo, plan)
        except Exception as exc:  # the estimate only informs this check; failing to make it must not stop a run
            log.warning("pre-flight: no disk estimate (%s: %s)", type(exc).__name__, exc)
            result.notes.append(f"no disk estimate ({type(exc).__name__}: {exc})")
            return
        if profile is None and (memory := check_memory(plan)):  # a submission's jobs run on other machines
            result.checks.append(memory)
        if missing:
            result.notes.append(f"no disk estimate for {len(missing)} stage(s), e.g. {missing[0]}")
        if needed is not None:
            result.needed_bytes = needed
            result.free_bytes = check_space(run_dir, needed, biggest)
            result.checks.append(f"disk: ~{_gb(needed)} needed, {_gb(result.free_bytes)} free")

    def gpus() -> None:
        if profile is not None:
            check_profile_gpus(suite, profile, profile_path, todo)
            result.checks.append("GPUs: the profile gives GPU jobs GPUs" if _cuda_requests(suite) else
                                 "GPUs: not requested explicitly")
        elif gpu := check_gpu(suite):
            result.checks.append(gpu)

    def reachable() -> None:
        with offline_env(profile.env if profile is not None else {}):
            reached = check_reachable(suite, todo)
        result.checks.append(f"models and data reachable: {', '.join(reached) or 'nothing to check'}")

    check(writable)
    if todo and run_dir.is_dir():
        check(space)
    check(gpus)
    check(reachable)
    if run_dir.is_dir():
        atomic_write_json(run_dir / "preflight.json", {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                       **asdict(result)})
    return result


def preflight_for_submission(suite_path: Path, mode: str, out: Path | None, profile_path: Path | None,
                             strict: bool = True, overrides: Sequence[str] = (), limit: int | None = None) -> Preflight:
    """The checks of ``harness slurm submit``: the stages not done yet, against the cluster profile."""
    from .runner import Runner
    from .slurm.profile import load_profile
    from .suite import load_suite

    profile = load_profile(profile_path)
    suite = load_suite(suite_path, mode, output_dir=out, overrides=list(overrides), limit=limit)
    runner = Runner(suite, show_progress=False)
    done = {s.id for s in runner.graph.stages if runner.is_done(s)}
    return run_preflight(suite, runner.run_dir, done=done, profile=profile, profile_path=profile_path or "(defaults)",
                         strict=strict)
