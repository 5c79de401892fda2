"""One stage of a run as the report reads it (its own module: the declarations and the run's reading both use it)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ..rundir import RECORDS, read_records


@dataclass
class StageData:
    id: str
    section: str
    entry: str
    plugin: str
    model: str
    seed: int | None  # None: the stage does not depend on the seed
    key: str
    deps: list[str]
    dir: Path
    status: str  # done | incomplete | not started | damaged: <which file>
    result: dict[str, Any] | None = None
    #: The records of a stage the report derives from others (an ensemble), held in memory; None: read from ``dir``.
    given_records: list[dict[str, Any]] | None = None

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def metrics(self) -> dict[str, Any]:
        return (self.result or {}).get("metrics") or {}

    def scalars(self) -> dict[str, float | None]:
        """The numeric metrics (NaN/inf become None: measured but undefined): the top-level numbers, and each entry
        of a top-level mapping whose values are all numbers as ``name/key`` (a metric per group, say
        ``weight_change/ffn``; a mapping that also holds text or structure is provenance, not a metric)."""
        out: dict[str, float | None] = {}

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        for name, value in self.metrics.items():
            if number(value):
                out[name] = float(value) if math.isfinite(value) else None
            elif isinstance(value, dict) and value and all(number(sub) for sub in value.values()):
                for key, sub in value.items():
                    out[f"{name}/{key}"] = float(sub) if math.isfinite(sub) else None
        return out

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        """Per-example records (read-only: a torn last line from a killed process is skipped, not repaired)."""
        if self.given_records is not None:
            return self.given_records
        return read_records(self.dir / RECORDS)[0]
