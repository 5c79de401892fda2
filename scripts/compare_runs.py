"""Compare the numbers of two run directories (a redesign must keep every result).

    python scripts/compare_runs.py RUN_BEFORE RUN_AFTER

Walks every stage present in both runs and compares each numeric value of its summary metrics (``result.json``,
nested dicts and lists included) that both report, exactly and with a relative tolerance; keys only one side has
(a new metric, a removed one) are listed, not compared. Exits 1 when a compared number differs beyond ``--rtol``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(value, bool):
        yield path, float(value)
    elif isinstance(value, (int, float)):
        yield path, float(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from numbers(item, f"{path}[{i}]")


def stage_metrics(run: Path) -> dict[str, dict[str, float]]:
    out = {}
    for result in sorted((run / "stages").rglob("result.json")):
        data = json.loads(result.read_text())
        stage = str(result.parent.relative_to(run / "stages"))
        out[stage] = dict(numbers(data.get("metrics") or {}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default: exact)")
    args = parser.parse_args(argv)
    before, after = stage_metrics(args.before), stage_metrics(args.after)
    compared = identical = 0
    worst = (0.0, "")
    only_before, only_after, differ = [], [], []
    for stage in sorted(set(before) | set(after)):
        if stage not in after or stage not in before:
            (only_before if stage in before else only_after).append(f"stage {stage}")
            continue
        b, a = before[stage], after[stage]
        only_before += [f"{stage}: {k}" for k in sorted(set(b) - set(a))]
        only_after += [f"{stage}: {k}" for k in sorted(set(a) - set(b))]
        for key in sorted(set(b) & set(a)):
            x, y = b[key], a[key]
            compared += 1
            if x == y or (math.isnan(x) and math.isnan(y)):
                identical += 1
                continue
            rel = abs(x - y) / max(abs(x), 1e-300)
            worst = max(worst, (rel, f"{stage}: {key} {x!r} -> {y!r}"))
            if rel > args.rtol:
                differ.append(f"{stage}: {key} {x!r} -> {y!r} (relative {rel:.2e})")
    print(f"{compared} numbers compared in {len(set(before) & set(after))} stages: {identical} identical, "
          f"{len(differ)} differ beyond rtol {args.rtol:g}; largest relative difference {worst[0]:.3g} {worst[1]}")
    for title, items in (("only before", only_before), ("only after", only_after), ("differ", differ)):
        if items:
            print(f"{title} ({len(items)}):")
            for item in items[:50]:
                print(f"  {item}")
            if len(items) > 50:
                print(f"  ... and {len(items) - 50} more")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
