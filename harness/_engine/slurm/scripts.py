"""sbatch scripts from the templates in ``slurm/``: a job's resources, setup lines, stage choice and command.

Templates use ``{{name}}`` placeholders (bash keeps its own ``$variables``); every value put into a script is
shell-quoted. A training job with a multi-process launcher starts one process per GPU SLURM allocated.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from ...errors import HarnessError
from ...files import escape, has_control
from .plan import Job
from .profile import Launcher, Profile, Resources

#: The shipped sbatch templates (package data, so a plain `pip install .` has them too); a profile may point elsewhere.
TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass
class JobContext:
    """What every job of one submission shares."""

    suite_path: Path
    suite_name: str
    mode: str
    run_dir: Path
    profile: Profile
    #: How the report job finishes the run: ``report`` (the ``harness report`` command) or ``run`` (a plain
    #: ``harness run`` without ``--stage``: every stage is done, so it only writes final_results.json).
    report_command: str = "run"
    #: The submission's command-line overrides (``key.path=value``), passed on to every job's ``harness run`` so
    #: that the jobs resolve the same suite as the submission did.
    overrides: tuple[str, ...] = ()
    #: The submission's ``--limit N``, passed on likewise.
    limit: int | None = None

    @property
    def suite_args(self) -> list[str]:
        """``harness run`` arguments after the suite that fix its resolution: the mode, the overrides, the limit."""
        return ["--mode", self.mode, *self.overrides, *(["--limit", str(self.limit)] if self.limit else [])]

    @property
    def python(self) -> str:
        return self.profile.python or sys.executable

    @property
    def workdir(self) -> Path:
        return self.profile.workdir or Path.cwd()

    @property
    def templates(self) -> Path:
        return self.profile.templates or TEMPLATES


def fill(template: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise HarnessError(f"sbatch template: unknown placeholder {{{{{name}}}}}; fix: use one of "
                               f"{', '.join(sorted(values))}")
        return values[name]

    return re.sub(r"\{\{(\w+)\}\}", value, template)


def read_template(ctx: JobContext, name: str) -> str:
    path = ctx.templates / name
    if not path.exists():
        raise HarnessError(f"sbatch template {path} not found; fix: copy it from {TEMPLATES} into the profile's "
                           "`templates` directory, or remove `templates:` to use the shipped ones")
    return path.read_text(encoding="utf-8")


def sbatch_lines(resources: Resources, profile: Profile, array: list[int]) -> list[str]:
    flags = ["--nodes=1", "--ntasks=1"]
    for name, flag in (("partition", "--partition"), ("account", "--account"), ("qos", "--qos"), ("time", "--time"),
                       ("mem", "--mem"), ("cpus_per_task", "--cpus-per-task")):
        value = getattr(resources, name)
        if value is not None:
            flags.append(f"{flag}={value}")
    if resources.gpus:
        flags.append(profile.gpu_flag.format(n=resources.gpus))
    if array:
        flags.append("--array=" + ",".join(str(t) for t in array))
    flags += resources.extra_sbatch
    return [f"#SBATCH {f}" for f in flags]


def harness_command(ctx: JobContext, *args: str) -> str:
    return shlex.join([ctx.python, "-m", "harness.cli", *args])


def stage_command(ctx: JobContext, launcher: Launcher | None) -> str:
    args = ["run", str(ctx.suite_path), *ctx.suite_args, "--out", str(ctx.run_dir), "--no-progress"]
    run = shlex.join(["-m", "harness.cli", "-v", *args]) + ' --stage "$STAGE"'
    python = shlex.quote(ctx.python)
    if launcher is None or launcher.kind == "none":
        return f"{python} {run}"
    extra = "".join(" " + shlex.quote(a) for a in launcher.extra_args)
    if launcher.kind == "torchrun":
        return (f'{python} -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node="$NPROC"{extra} '
                f"{run}")
    return f'{python} -m accelerate.commands.launch $ACCELERATE_FLAGS{extra} {run}'


def launch_setup(launcher: Launcher, resources: Resources) -> str:
    """Shell lines that set NPROC (and accelerate's flags) for a multi-process training job."""
    if launcher.nproc is not None:
        lines = [f"NPROC={launcher.nproc}"]
    else:
        default = resources.gpus or 1
        lines = ["# One process per GPU that SLURM allocated to this job.",
                 'if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then NPROC=$SLURM_GPUS_ON_NODE',
                 'elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then',
                 '  NPROC=$(echo "$CUDA_VISIBLE_DEVICES" | tr , "\\n" | grep -c .)',
                 f"else NPROC={default}; fi"]
    lines.append("# Split the job's CPU threads between the processes.")
    lines.append("export OMP_NUM_THREADS=$(( OMP_NUM_THREADS / NPROC > 0 ? OMP_NUM_THREADS / NPROC : 1 ))")
    # The trainer reads how to share the model where it reads the launcher's other settings (WORLD_SIZE).
    lines.append(f"export HARNESS_PARALLEL={launcher.strategy}  # ddp: replicate the model; fsdp: shard it")
    if launcher.kind == "accelerate":
        flags = '--num_machines=1 --num_processes="$NPROC"'
        if launcher.accelerate_config is not None:
            flags += " --config_file=" + shlex.quote(str(launcher.accelerate_config))
        lines.append(f'ACCELERATE_FLAGS="{flags}"')
        if launcher.strategy == "fsdp":
            lines.append('ACCELERATE_FLAGS="$ACCELERATE_FLAGS --use_fsdp"  # shard parameters, grads, optimiser state')
        else:
            lines.append('[ "$NPROC" -gt 1 ] && ACCELERATE_FLAGS="$ACCELERATE_FLAGS --multi_gpu"  # DDP')
    lines.append('echo "[harness-slurm] launching $NPROC process(es)" >>"$LOG"')
    return "\n".join(lines)


def select_stage(job: Job) -> str:
    if not job.is_array:
        return f"STAGE={shlex.quote(job.stages[0].id)}"
    cases = [f"  {task}) STAGE={shlex.quote(stage.id)} ;;" for task, stage in zip(job.tasks, job.stages)]
    return "\n".join(['case "${SLURM_ARRAY_TASK_ID:-}" in', *cases,
                      '  *) echo "no stage for array task ${SLURM_ARRAY_TASK_ID:-}" >&2; exit 2 ;;', "esac"])


def setup_lines(profile: Profile) -> str:
    lines = ["export PYTHONUNBUFFERED=1"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in profile.env.items()]
    lines += profile.setup
    return "\n".join(lines)


def sbatch_value(value: str, pattern: str = "") -> str:
    """A value for an ``#SBATCH --flag=VALUE`` line: in double quotes with ``\\`` and ``"`` escaped (sbatch's own
    quoting of option lines, which no shell ever reads) and ``%`` doubled (sbatch's filename patterns);
    ``pattern`` (``%j.out``) is appended as it is."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + pattern + '"'


def check_paths(ctx: JobContext) -> None:
    """Refuse, in one line, a path that would go into a script holding a newline or control character: quoting keeps
    `$(...)`, backticks and quotes inert, but a newline ends an ``#SBATCH`` or comment line."""
    for what, value in (("run directory (--out / output_dir)", str(ctx.run_dir)), ("suite file", str(ctx.suite_path)),
                        ("profile workdir", str(ctx.workdir)), ("profile python", ctx.python),
                        ("profile templates", str(ctx.templates)),
                        *(("command-line override", o) for o in ctx.overrides)):
        if has_control(value):
            raise HarnessError(f"{escape(value)}: the {what} holds a newline or control character, which cannot go "
                               f"into an sbatch script safely; fix: give the {what} without control characters")


def title(job: Job, ctx: JobContext) -> str:
    what = job.stages[0].id if len(job.stages) == 1 else ", ".join(s.id for s in job.stages)
    if job.kind == "report":
        what = "report (after every stage)"
    return escape(f"harness job: {what} -- suite {ctx.suite_name} ({ctx.mode} mode), run {ctx.run_dir}")


def render(job: Job, ctx: JobContext) -> str:
    check_paths(ctx)
    resources = ctx.profile.resources(job.kind)
    log_name = f"{job.name}.%A_%a.out" if job.is_array else f"{job.name}.%j.out"
    values = {
        "title": title(job, ctx),
        "job_name": sbatch_value(f"{ctx.suite_name}:{job.name.replace('__', '/')}"),
        "slurm_log": sbatch_value(str(ctx.run_dir / "slurm" / "logs") + "/", pattern=log_name),
        "signal_lead_s": str(ctx.profile.signal_lead_s),
        "sbatch_lines": "\n".join(sbatch_lines(resources, ctx.profile, job.tasks)),
        "setup": setup_lines(ctx.profile),
        "workdir": shlex.quote(str(ctx.workdir)),
        "run_dir": shlex.quote(str(ctx.run_dir)),
    }
    if job.kind == "report":
        if ctx.report_command == "report":
            values["command"] = harness_command(ctx, "report", str(ctx.run_dir))
        else:
            values["command"] = harness_command(ctx, "run", str(ctx.suite_path), *ctx.suite_args, "--out",
                                                str(ctx.run_dir), "--no-progress")
        return fill(read_template(ctx, "report.sbatch.tmpl"), values)
    launcher = ctx.profile.launcher if job.kind == "train" and ctx.profile.launcher.kind != "none" else None
    values.update(
        select_stage=select_stage(job),
        launch_setup=launch_setup(launcher, resources) if launcher else "",
        # A launcher's workers are its children: they checkpoint; the launcher just waits for them.
        forward_signal=('[ -n "${child:-}" ] && { pkill -"$1" -P "$child" || kill -s "$1" "$child"; }' if launcher
                        else '[ -n "${child:-}" ] && kill -s "$1" "$child"'),
        command=stage_command(ctx, launcher),
        requeue="1" if ctx.profile.requeue else "0",
    )
    return fill(read_template(ctx, "stage.sbatch.tmpl"), values)
