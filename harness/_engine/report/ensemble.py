"""The per-example worst case over several attacks (``report.ensembles``): AutoAttack's principle (Croce and Hein,
2020), an example counts as broken when any attack of the ensemble breaks it, so a model is judged by the strongest
attack on each example, not by the best attack on average.

An ensemble is an attack entry the report derives (no stage runs): per model and seed, on the examples every member
ran (records paired by ``id``; they must agree on the ``match`` fields, the clean NLL by default: the same task),
each example keeps the whole record of the member with the largest ``by`` (ties: the member listed first), marked
with that member's name (``attack``); the budget fields of its records are the members' summed, since the ensemble
ran them all. Its metrics are those every member declares, computed from these
records by their declarations (``harness.summary``); a one-off cost (``upfront_for``) is the members' summed; a
summary value the records do not give (a configured threshold, say) is kept only where every member reports the
same and ran exactly the ensemble's examples.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...api import MetricSpec
from ...summary import numeric, summary_from_records

__all__ = ["ensemble_result", "mismatch", "worst_case"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _ranked(value: Any) -> float:
    """``by``'s value for ranking: a missing or non-finite one ranks last."""
    number = numeric(value) if _number(value) else math.nan
    return number if math.isfinite(number) else -math.inf


def mismatch(members: Sequence[tuple[str, Sequence[dict[str, Any]]]], match: Sequence[str]) -> str | None:
    """Where the members' records of one example disagree on a ``match`` field (they attacked different tasks on
    that document), as a sentence; None when they agree everywhere."""
    by_id = [{str(r["id"]): r for r in records if "id" in r} for _, records in members]
    for i in by_id[0]:
        for name in match:
            values = [m[i].get(name) for m in by_id if i in m]
            numbers = [float(v) for v in values if _number(v)]
            if len(numbers) > 1 and max(numbers) - min(numbers) > 1e-4 * max(1.0, max(abs(v) for v in numbers)):
                return (f"the members' records of example {i} differ in {name} ({min(numbers):.6g} to "
                        f"{max(numbers):.6g}): they attack different tasks on it")
    return None


def worst_case(members: Sequence[tuple[str, Sequence[dict[str, Any]]]], by: str,
               summed: Sequence[str]) -> list[dict[str, Any]]:
    """The ensemble's records from its members' (``(entry, records)`` each): one per example id every member has,
    in the first member's order."""
    by_id = [{str(r["id"]): r for r in records if "id" in r} for _, records in members]
    common = [i for i in by_id[0] if all(i in other for other in by_id[1:])]
    out = []
    for i in common:
        best = max(range(len(members)), key=lambda k: (_ranked(by_id[k][i].get(by)), -k))
        record = {**by_id[best][i], "attack": members[best][0]}
        for name in summed:
            values = [m[i].get(name) for m in by_id]
            if all(_number(v) for v in values):
                record[name] = sum(values)
            else:  # a member that did not count this budget: no total to give
                record.pop(name, None)
        out.append(record)
    return out


def _ensemble_specs(declared: Sequence[Sequence[MetricSpec]]) -> list[MetricSpec]:
    """What every member declares, then the one-off costs (``upfront_for``) any member declares."""
    first, rest = declared[0], declared[1:]
    common = [s for s in first if all(any(o.name == s.name for o in other) for other in rest)]
    upfront = {s.name: s for specs in declared for s in specs if s.upfront_for and s.kind == "scalar"}
    return common + [s for name, s in upfront.items() if all(c.name != name for c in common)]


def _curve(spec: MetricSpec, stored: Any, records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A declared curve recomputed on the ensemble's records, at the thresholds (and under the key) of a member's
    stored curve."""
    if not (isinstance(stored, dict) and isinstance(stored.get("thresholds"), list) and spec.field):
        return None
    key = next((k for k, v in stored.items() if k != "thresholds" and isinstance(v, list)), None)
    values = np.asarray([numeric(r[spec.field]) for r in records if _number(r.get(spec.field))], dtype=float)
    if key is None or not len(values):
        return None
    return {"thresholds": stored["thresholds"], key: [float(np.mean(values > t)) for t in stored["thresholds"]]}


def ensemble_result(members: Sequence[tuple[str, dict[str, Any], Sequence[MetricSpec]]], by: str,
                    records: Sequence[dict[str, Any]], same_examples: bool) -> dict[str, Any]:
    """The ensemble's result (as a stage's ``result.json`` reads) from its members' (``(entry, result, declared
    metrics)`` each) and its records (:func:`worst_case`); ``same_examples``: every member ran exactly the ensemble's
    examples, so a summary value they all agree on describes the ensemble's examples too."""
    specs = _ensemble_specs([declared for _, _, declared in members])
    metrics: dict[str, Any] = summary_from_records(specs, records)
    kept = []
    for spec in specs:
        values = [(result.get("metrics") or {}).get(spec.name) for _, result, _ in members]
        if spec.name in metrics or spec.kind in ("series", "histogram"):
            kept.append(spec)
        elif spec.kind == "curve":
            curve = _curve(spec, values[0], records)
            if curve is not None:
                metrics[spec.name] = curve
                kept.append(spec)
        elif spec.kind == "scalar" and spec.upfront_for:  # a member without this one-off cost spent none
            metrics[spec.name] = sum(v for v in values if _number(v))
            kept.append(spec)
        elif (spec.kind == "scalar" and same_examples and values[0] is not None
              and all(v == values[0] for v in values)):
            metrics[spec.name] = values[0]
            kept.append(spec)
    chosen = Counter(str(r.get("attack")) for r in records)
    return {"metrics": metrics, "declared_metrics": [s.as_dict() for s in kept],
            # no duration of its own: its members' stages took the time (summing it here would count it twice)
            "duration_s": None,
            "ensemble": {"entries": [entry for entry, _, _ in members], "by": by, "examples": len(records),
                         "worst_from": {entry: chosen.get(entry, 0) for entry, _, _ in members}}}
