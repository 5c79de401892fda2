"""Read a run directory: the stages the run planned (``config.resolved.json``) and what each one left behind.

A stage counts as done only when its ``done.json`` holds the stage's current cache key; anything else is missing
(``incomplete`` when it started, ``not started`` otherwise, ``damaged: ...`` when a file it finished with no longer
reads back) and never contributes a number. Nothing here writes, and no damaged file makes it raise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..rundir import RunDir, read_json_object
from ...config import validated
from .config import Ensemble, ReportConfig
from .declared import declared_specs
from .ensemble import ensemble_result, mismatch, worst_case
from .stage_data import StageData


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
    stages += ensemble_stages(stages, config.ensembles)
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
    controls.update({e.name: e.control_of for e in config.ensembles if e.control_of})
    return RunData(run_dir=run_dir, suite=suite.get("name", run_dir.name), mode=resolved.get("mode", "?"),
                   seeds=resolved.get("seeds", []), models=models, stages=stages, config=config,
                   configs=resolved.get("configs", {}), environment=environment, controls=controls)


#: The plugin name of an entry the report derives (never a registered plugin's: not a valid plugin name).
ENSEMBLE_PLUGIN = "(ensemble)"


def ensemble_stages(stages: list[StageData], ensembles: list[Ensemble]) -> list[StageData]:
    """One derived attack stage per ensemble, model and seed that every member has a stage for (see
    :mod:`.ensemble`); it is done when every member is and they share examples, else missing with the reason."""
    out = []
    found = {(s.entry, s.model, s.seed): s for s in stages if s.section == "attacks"}
    for ensemble in ensembles:
        cells = dict.fromkeys((s.model, s.seed) for s in stages if s.section == "attacks" and s.entry in
                              ensemble.entries)
        for model, seed in cells:
            found_members = [found.get((entry, model, seed)) or found.get((entry, model, None))
                             for entry in ensemble.entries]
            members = [m for m in found_members if m is not None]
            if len(members) < len(found_members):  # a member not run on this model: no ensemble here
                continue
            stage = StageData(id=f"attacks/{ensemble.name}/{model}/{'unseeded' if seed is None else seed}",
                              section="attacks", entry=ensemble.name, plugin=ENSEMBLE_PLUGIN, model=model, seed=seed,
                              key="+".join(m.key for m in members), deps=[m.id for m in members],
                              dir=Path(os.devnull), status="not started")
            out.append(stage)
            declared = [declared_specs(m) for m in members]
            records = []
            if any(not m.done for m in members):
                stage.status = f"waiting for {', '.join(m.id for m in members if not m.done)}"
            elif any(d is None for d in declared):
                stage.status = "a member's result records no declared metrics"
            elif differ := mismatch([(m.entry, m.records) for m in members], ensemble.match):
                stage.status = differ
            else:
                summed = [s.field for s in declared[0] or [] if s.budget and s.field]
                records = worst_case([(m.entry, m.records) for m in members], ensemble.by, summed)
                stage.status = "done" if records else "its members share no example id"
            if stage.done:
                ids = {str(r["id"]) for r in records}
                same = all({str(r.get("id")) for r in m.records} == ids for m in members)
                stage.given_records = records
                stage.result = ensemble_result([(m.entry, m.result or {}, d or []) for m, d in zip(members, declared)],
                                               ensemble.by, records, same)
    return out
