"""Command-line conventions shared by the suite commands: ``key.path=value`` overrides, ``--limit N``, the mode a
suite runs in (and a notice when a suite's own `quick:` smoke test runs because ``--mode`` was not given)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODE = "quick"


def add_mode_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["quick", "full"], default=None,
                   help="which of the suite's `quick:` / `full:` overrides to apply (default: quick)")


def add_override_args(p: argparse.ArgumentParser, limit: bool = True) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override a suite key after the mode's overrides, e.g. attacks.hotflip.flips=8 seeds=[1,2] "
                        "(values are YAML; validated like the suite; recorded in config.resolved.json)")
    if limit:
        p.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                       help="quick trial: cap the examples/documents of every metric and attack entry at N "
                            "(written to <output_dir>-limitN unless --out is given; recorded in config.resolved.json)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def chosen_mode(args: argparse.Namespace) -> str:
    """The mode to load ``args.suite`` in: ``--mode``, else quick."""
    return args.mode if args.mode is not None else DEFAULT_MODE


def smoke_test_note(args: argparse.Namespace) -> str | None:
    """When ``--mode`` was not given and the suite (loaded fine) has its own `quick:` overrides (a full-size suite
    whose default is a smoke test, such as the shipped full experiment): the line that says so, else None."""
    if args.mode is None and _has_quick_section(args.suite):
        return (f"note: {args.suite} runs in quick mode, its smoke test (the suite's `quick:` overrides: fewer seeds, "
                "smaller sizes); pass --mode full for the real experiment")
    return None


def _has_quick_section(path: Path) -> bool:
    from ..errors import HarnessError
    from .._engine.suite import load_yaml

    try:
        return isinstance(load_yaml(Path(path).resolve()).get("quick"), dict)
    except HarnessError:  # loading the suite says what is wrong, with the file and key
        return False
