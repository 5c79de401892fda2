"""Read a run directory: the stages the run planned (``config.resolved.json``) and what each one left behind.

A stage counts as done only when its ``done.json`` holds the stage's current cache key; anything else is missing
(``incomplete`` when it started, ``not started`` otherwise, ``damaged: ...`` when a file it finished with no longer
reads back) and never contributes a number. Nothing here writes, and no damaged file makes it raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..rundir import RECORDS, RunDir, read_json_object, read_records
from ...config import validated
from .config import ReportConfig


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
        return read_records(self.dir / RECORDS)[0]


@dataclass
class RunData:
    run_dir: Path
    suite: str
    mode: str
    seeds: list[int]
    models: list[str]
    stages: list[StageData]
    config: ReportConfig
    #: Entry configs by ``section.entry`` (from config.resolved.json), for captions and labels.
    configs: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    #: Control entry -> the attack entry it is the random control of (the suite's ``control_of:``).
    controls: dict[str, str] = field(default_factory=dict)

    def evaluations(self) -> list[StageData]:
        return [s for s in self.stages if s.section in ("metrics", "attacks")]

    def entries(self) -> list[tuple[str, str, str]]:
        """(section, entry, plugin) of every metrics/attacks entry, in suite order."""
        seen: dict[tuple[str, str], str] = {}
        for s in self.evaluations():
            seen.setdefault((s.section, s.entry), s.plugin)
        return [(sec, entry, plugin) for (sec, entry), plugin in seen.items()]

    def resolve_entry(self, name: str) -> str | None:
        """An entry name, or the single entry that uses a plugin of that name (``gcg`` -> ``gcg_long``)."""
        entries = self.entries()
        if any(e == name for _, e, _ in entries):
            return name
        by_plugin = [e for _, e, p in entries if p == name]
        return by_plugin[0] if len(by_plugin) == 1 else None

    @property
    def missing(self) -> list[StageData]:
        return [s for s in self.stages if not s.done]


def load_run(run_dir: str | Path, config: ReportConfig | None = None) -> RunData:
    """Everything the report needs from ``run_dir``; ``config`` defaults to the suite's ``report:`` of that run."""
    run_dir = Path(run_dir).resolve()
    resolved_path = run_dir / "config.resolved.json"
    rundir = RunDir(run_dir)
    resolved = rundir.resolved()
    suite = resolved.get("suite") if isinstance(resolved.get("suite"), dict) else {}
    if config is None:
        config = validated(ReportConfig, suite.get("report") or {}, resolved_path, "suite.report", "report")
    stages = []
    for st in resolved["stages"]:
        sdir = rundir.stage_dir(st["id"])
        state = rundir.state(st["id"], st["key"])
        named = {k: st[k] if isinstance(st.get(k), str) else "?" for k in ("section", "entry", "plugin", "model")}
        stages.append(StageData(id=st["id"], **named, seed=st.get("seed"), key=st["key"], deps=st.get("deps", []),
                                dir=sdir, status=f"damaged: {state.damage}" if state.damage else state.status,
                                result=state.result))
    environment = read_json_object(run_dir / "environment.json") or {}
    # config.resolved.json is written with sorted keys, so the suite's model order is the stages' order (the graph
    # visits models in suite order); the baseline comes first.
    enabled = [m for m, opts in (suite.get("models") or {}).items()
               if not (isinstance(opts, dict) and opts.get("enabled") is False)]
    seen = [s.model for s in stages if s.section != "train"] + [s.model for s in stages] + enabled
    models = list(dict.fromkeys(([config.baseline] if config.baseline in seen else []) + seen))
    attacks = suite.get("attacks") if isinstance(suite.get("attacks"), dict) else {}
    controls = {name: opts["control_of"] for name, opts in attacks.items()
                if isinstance(opts, dict) and isinstance(opts.get("control_of"), str)}
    return RunData(run_dir=run_dir, suite=suite.get("name", run_dir.name), mode=resolved.get("mode", "?"),
                   seeds=resolved.get("seeds", []), models=models, stages=stages, config=config,
                   configs=resolved.get("configs", {}), environment=environment, controls=controls)
