"""The one command line: ``harness list | validate | run`` (more subcommands register in ``COMMANDS``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..errors import HarnessError
from ..files import escape
from .._engine.logs import configure_logging

# Wide enough for tables when the output is a file or a pipe (rich would otherwise assume 80 columns).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

#: name -> (help, add_arguments, handler). Issues that add commands (train, report, slurm, plan...) add here.
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def note(line: str | None) -> None:
    """A one-line notice on stderr (nothing for None)."""
    if line:
        err_console.print(line, highlight=False, markup=False, soft_wrap=True)


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def register(handler: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, handler)
        return handler

    return register


def _suite_args(p: argparse.ArgumentParser) -> None:
    from .conventions import add_mode_arg, add_override_args

    p.add_argument("suite", type=Path, help="suite YAML file")
    add_mode_arg(p)
    add_override_args(p)


@command("list", "list every installed plugin, its kind and the package it came from", lambda p: None)
def cmd_list(args: argparse.Namespace) -> int:
    from .._engine.plugins import load_registry

    table = Table(title="harness plugins")
    for col in ("kind", "name", "package", "module", "description"):
        table.add_column(col)
    for info in load_registry().all():
        table.add_row(info.kind, info.name, info.package, info.module, info.description)
    console.print(table)
    return 0


@command("validate", "check a suite (plugins, keys, types, files) without running it", _suite_args)
def cmd_validate(args: argparse.Namespace) -> int:
    from .conventions import chosen_mode, smoke_test_note
    from .._engine.graph import build_graph
    from .._engine.suite import load_suite

    mode = chosen_mode(args)
    suite = load_suite(args.suite, mode, overrides=args.overrides, limit=args.limit)
    note(smoke_test_note(args))
    graph = build_graph(suite)
    console.print(f"{args.suite}: valid ({mode} mode): {len(suite.models)} models, {len(graph.stages)} stages, "
                  f"seeds {suite.seeds}")
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    _suite_args(p)
    p.add_argument("--out", type=Path, default=None, help="run directory (default: the suite's output_dir)")
    p.add_argument("--stage", action="append", default=None,
                   help="run only these stages (repeatable): an id, a prefix (train/monotonic: every seed) or a glob "
                        "(attacks/*/tiny/*)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--skip-preflight", action="store_true",
                   help="skip the pre-flight checks (writable run directory, free space, GPU, models and data)")
    p.add_argument("--force", action="store_true",
                   help="use --out even when it holds another suite's run or files that are not a harness run")


@command("run", "run a suite: every stage, skipping what is complete and resuming what was interrupted", _run_args)
def cmd_run(args: argparse.Namespace) -> int:
    from .conventions import chosen_mode, smoke_test_note
    from .._engine.rundir import check_run_target
    from .._engine.runner import Runner, summary_table
    from .._engine.suite import load_suite

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun (SLURM training jobs): one GPU per process,
        import torch  # chosen before any model loads onto the default GPU

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    suite = load_suite(args.suite, chosen_mode(args), output_dir=args.out, overrides=args.overrides, limit=args.limit)
    note(smoke_test_note(args))
    check_run_target(suite.output_dir, suite.name, force=args.force)
    runner = Runner(suite, show_progress=False if args.no_progress else None, only=args.stage,
                    rank=int(os.environ.get("RANK", "0")))
    if not args.skip_preflight:
        from .._engine.preflight import run_preflight

        stages = [s for s in runner.graph.stages if runner.only is None or s.id in runner.only]
        run_preflight(suite, runner.run_dir, stages, done={s.id for s in stages if runner.is_done(s)})
    outcomes = runner.run()
    for o in outcomes:
        err_console.print(f"{o.status:>9}  {o.stage.id}")
    if any(o.status == "preempted" for o in outcomes):
        err_console.print("stopped on request; run the same command again to resume")
        return 3
    from .._engine.report import open_first_lines

    console.print(summary_table(runner.run_dir))
    console.print(f"run directory: {runner.run_dir}")
    for line in open_first_lines(runner.run_dir):  # last: the files to open
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    return 0


#: Modules that add subcommands with ``@command`` (imported when the parser is built, so start-up stays cheap).
COMMAND_MODULES: list[str] = ["harness.cli.train", "harness.cli.report", "harness.cli.slurm", "harness.cli.plan",
                              "harness.cli.power", "harness.cli.describe", "harness.cli.study"]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="harness", description="Robustness benchmark harness for causal LMs.",
        epilog="start with `harness run suites/quick.yaml` (the tiny offline demo); `harness describe PLUGIN` shows a "
               "plugin's options; README.md has the path from the demo to a cluster")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log more, show the libraries' warnings (transformers, lm-eval), and show tracebacks")
    parser.add_argument("--version", action="version", version=f"harness {__version__} (Python "
                        f"{sys.version.split()[0]})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    parser = build_parser()
    # KEY=VALUE overrides may come after options too (`run SUITE --mode full seeds=[1]`); argparse alone would only
    # take them right after the suite.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command is None:  # bare `harness` (or only -v): the help, as `harness --help` prints it
        parser.print_help()
        return 0
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
        from ..context import StopNow

        err_console.print("interrupted; run the same command again to resume")
        return 3 if isinstance(exc, StopNow) else 130

