"""The one command line: ``harness list | validate | run`` (more subcommands register in ``COMMANDS``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import HarnessError
from .files import escape
from .logs import configure_logging

# Wide enough for tables when the output is a file or a pipe (rich would otherwise assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

#: name -> (help, add_arguments, handler). Issues that add commands (train, report, slurm, plan...) add here.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(handler: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, handler)
        return handler

    return register


def _suite_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", type=Path, help="suite YAML file")
    p.add_argument("--mode", choices=["quick", "full"], default="quick", help="which overrides to apply")


@command("list", "list every installed plugin, its kind and the package it came from", lambda p: None)
def cmd_list(args: argparse.Namespace) -> int:
    from .plugins import load_registry

    table = Table(title="harness plugins")
    for col in ("kind", "name", "package", "module", "description"):
        table.add_column(col)
    for info in load_registry().all():
        table.add_row(info.kind, info.name, info.package, info.module, info.description)
    console.print(table)
    return 0


@command("validate", "check a suite (plugins, keys, types, files) without running it", _suite_args)
def cmd_validate(args: argparse.Namespace) -> int:
    from .graph import build_graph
    from .suite import load_suite

    suite = load_suite(args.suite, args.mode)
    graph = build_graph(suite)
    console.print(f"{args.suite}: valid ({args.mode} mode): {len(suite.models)} models, {len(graph.stages)} stages, "
                  f"seeds {suite.seeds}")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    _suite_args(p)
    p.add_argument("--out", type=Path, default=None, help="run directory (default: the suite's output_dir)")
    p.add_argument("--stage", action="append", default=None, help="run only this stage id (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--skip-preflight", action="store_true",
                   help="skip the pre-flight checks (writable run directory, free space, GPU, models and data)")
    p.add_argument("--force", action="store_true",
                   help="use --out even when it holds another suite's run or files that are not a harness run")


@command("run", "run a suite: every stage, skipping what is complete and resuming what was interrupted", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    from .rundir import check_run_target
    from .runner import Runner, summary_table
    from .suite import load_suite

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun (SLURM training jobs): one GPU per process,
        import torch  # chosen before any model loads onto the default GPU

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    suite = load_suite(args.suite, args.mode, output_dir=args.out)
    check_run_target(suite.output_dir, suite.name, force=args.force)
    runner = Runner(suite, show_progress=False if args.no_progress else None, only=args.stage,
                    rank=int(os.environ.get("RANK", "0")))
    if not args.skip_preflight:
        from .preflight import run_preflight

        stages = [s for s in runner.graph.stages if args.stage is None or s.id in args.stage]
        run_preflight(suite, runner.run_dir, stages, done={s.id for s in stages if runner.is_done(s)})
    outcomes = runner.run()
    for o in outcomes:
        err_console.print(f"{o.status:>9}  {o.stage.id}")
    if any(o.status == "preempted" for o in outcomes):
        err_console.print("stopped on request; run the same command again to resume")
        return 3
    console.print(summary_table(runner.run_dir))
    console.print(f"run directory: {runner.run_dir}")
    return 0


#: Modules that add subcommands with ``@command`` (imported when the parser is built, so start-up stays cheap).
COMMAND_MODULES: list[str] = ["harness.cli_train", "harness.cli_report", "harness.cli_slurm", "harness.cli_plan",
                              "harness.cli_power"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="harness", description="Robustness benchmark harness for causal LMs.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log more, show the libraries' warnings (transformers, lm-eval), and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help, add_arguments, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add_arguments(p)
        p.set_defaults(handler=handler)
    return parser


def environment_error_line(exc: BaseException) -> str:
    """The one line for a failure of the machine or the filesystem rather than of the harness: a file or directory
    the process may not write (a run directory made read-only mid-run), a directory where a file belongs (or the
    reverse), memory that ran out. What was computed is kept: records are durable line by line."""
    if isinstance(exc, MemoryError):
        return ("out of memory (MemoryError); fix: give the process more memory (a larger node or SLURM --mem), or "
                "shrink the model or batch (`batch_tokens`, `micro_batch`, `max_documents`), then run the same "
                "command again to resume")
    assert isinstance(exc, OSError)
    where = exc.filename if exc.filename is not None else "(unknown path)"
    if isinstance(exc, PermissionError):
        fix = ("make it readable and writable for this user (`chmod u+rw`, or `chmod u+rwx` for a directory), or "
               "pass another --out; then run the same command again to resume")
    elif isinstance(exc, IsADirectoryError):
        fix = "a file belongs there: remove or rename that directory (or point the option at a file)"
    else:
        fix = "a directory belongs there: remove or rename that file (or point the option at a directory)"
    return f"{where}: {exc.strerror or type(exc).__name__}; fix: {fix}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.handler(args)
    except HarnessError as exc:
        if args.verbose:
            raise
        # markup=False: messages hold brackets (`pip install 'harness[textattack]'`, `constraints[0]`) that rich
        # would otherwise take for style tags and drop.
        err_console.print(f"error: {escape(str(exc))}", highlight=False, soft_wrap=True, markup=False)
        return 2
    except (PermissionError, IsADirectoryError, NotADirectoryError, MemoryError) as exc:
        if args.verbose:
            raise
        err_console.print(f"error: {escape(environment_error_line(exc))}", highlight=False, soft_wrap=True,
                          markup=False)
        return 2
    except KeyboardInterrupt as exc:
        from .context import StopNow

        err_console.print("interrupted; run the same command again to resume")
        return 3 if isinstance(exc, StopNow) else 130


if __name__ == "__main__":
    # `python -m harness.cli` runs this file as __main__; subcommand modules register into the importable
    # `harness.cli`, so dispatch through that module.
    from harness.cli import main as _main

    sys.exit(_main())
