"""Compare every number of two final_results.json files (before/after a change that must not change results).

    python scripts/compare_results.py BEFORE.json AFTER.json [--ignore KEY ...]

Walks both JSON trees; numbers (ints and floats, not booleans) at the same path are compared. Paths are built from
dict keys and list positions, except lists of dicts carrying an ``id`` (stages) or ``section``+``entry``+``model``
(result groups), which are keyed by those so that reordering is not a difference. Prints how many numbers were
compared, the largest absolute and relative difference, every path whose numbers differ, and the numeric paths only
one side has. Keys that are measured wall times (``duration_s``, ``*_time_s``, ``tokens_per_s``) and ``generated``
are skipped by default: they are not results. Exit 1 when a compared number differs (beyond --rtol).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any

TIMING = re.compile(r"^(duration_s|.*_time_s|tokens_per_s|generated|finished)$")


def _key(item: Any, i: int) -> str:
    if isinstance(item, dict):
        if "id" in item and isinstance(item["id"], str):
            return f"[{item['id']}]"
        if {"section", "entry", "model"} <= set(item):
            return f"[{item['section']}.{item['entry']}@{item['model']}]"
        if {"indicator", "model", "entry"} <= set(item):
            return f"[{item['indicator']}|{item.get('model')}|{item.get('entry')}]"
        if {"attack", "model"} <= set(item):
            return f"[{item['attack']}@{item['model']}]"
        if "model" in item and "cells" in item:
            return f"[{item['model']}]"
    return f"[{i}]"


def flatten(node: Any, path: str, out: dict[str, float], ignore: set[str]) -> None:
    if isinstance(node, bool) or node is None or isinstance(node, str):
        return
    if isinstance(node, (int, float)):
        out[path] = float(node)
    elif isinstance(node, dict):
        for k, v in node.items():
            if TIMING.match(str(k)) or k in ignore:
                continue
            flatten(v, f"{path}.{k}", out, ignore)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            flatten(v, path + _key(v, i), out, ignore)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--ignore", nargs="*", default=[])
    p.add_argument("--rtol", type=float, default=0.0)
    args = p.parse_args(argv)
    a, b = {}, {}
    flatten(json.load(open(args.before)), "", a, set(args.ignore))
    flatten(json.load(open(args.after)), "", b, set(args.ignore))
    common = sorted(set(a) & set(b))
    diffs = []
    max_abs = max_rel = 0.0
    for k in common:
        x, y = a[k], b[k]
        if math.isnan(x) and math.isnan(y):
            continue
        d = abs(x - y)
        rel = d / max(abs(x), abs(y)) if d else 0.0
        max_abs, max_rel = max(max_abs, d), max(max_rel, rel)
        if rel > args.rtol:
            diffs.append((k, x, y))
    print(f"compared {len(common)} numbers; max |diff| {max_abs:.3g}, max relative diff {max_rel:.3g}; "
          f"{len(diffs)} differ")
    for k, x, y in diffs[:50]:
        print(f"  DIFF {k}: {x!r} -> {y!r}")
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    print(f"only before: {len(only_a)}; only after: {len(only_b)}")
    for k in only_a[:30]:
        print(f"  only before {k}")
    for k in only_b[:30]:
        print(f"  only after  {k}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
