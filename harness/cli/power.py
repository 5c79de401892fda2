"""``harness power RUN_DIR``: documents and seeds each primary endpoint needs for 80% power, from a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .main import command, console


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a finished (pilot) run directory whose suite declares report.primary")
    p.add_argument("--power", type=float, default=0.80, help="the power to plan for (default 0.80)")


@command("power", "from a run's paired per-example differences and seed variance, how many documents and seeds "
         "each primary endpoint (report.primary) needs to settle its smallest effect of interest", _args)
def cmd_power(args: argparse.Namespace) -> int:
    from ..errors import HarnessError
    from .._engine.plugins import load_registry
    from .._engine.report import load_run
    from .._engine.report.aggregate import aggregate
    from .._engine.report.power import power_lines, power_table

    if not 0 < args.power < 1:
        raise HarnessError(f"--power {args.power}: must be between 0 and 1 (e.g. --power 0.8)")
    agg = aggregate(load_run(args.run_dir), load_registry().plugin_class)
    console.print("\n".join(power_lines(power_table(agg, args.power))), highlight=False, markup=False)
    return 0
