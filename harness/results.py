"""Read a run's results: the public reader for write-ups, notebooks and studies built on the harness.

    from harness import results

    run = results.load("runs/quick")                 # rebuilds the run's report first (``harness report``)
    run.models, run.seeds, run.baseline, run.compare
    run.metric("metrics", "perplexity", "baseline", "perplexity")        # mean, std, ci95, n over seeds
    run.per_seed("attacks", "hotflip", "baseline", "success_rate")       # {"42": 0.5, ...}
    run.records("attacks/hotflip/baseline/s42")                          # the stage's per-example records
    run.comparisons(kind="reduction", model="monotonic", entry="hotflip")  # the report's judged comparisons
    run.table("main")                                                    # a table of report.tables, as data

Everything comes from the run directory: ``final_results.json`` (written by the report), ``config.resolved.json``
(the suite as it ran, every entry's resolved config, the stage graph) and the stages' record logs. A study reads
runs through this module only, so the report's internals can change without breaking it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import HarnessError

__all__ = ["RunResults", "load", "suite_configs"]


def suite_configs(path: str | Path, mode: str = "quick") -> dict[str, Any]:
    """What a suite resolves to before it runs (what ``config.resolved.json`` will hold): its name, seeds and every
    entry's plugin config with the defaults filled in, by section: ``{"seeds": [...], "train": {name: {...}}, ...}``.
    Raises :class:`~harness.ConfigError` for a suite ``harness validate`` rejects."""
    from ._engine.suite import SECTIONS, load_suite

    suite = load_suite(path, mode)
    out: dict[str, Any] = {"name": suite.name, "mode": suite.mode, "seeds": list(suite.seeds)}
    for section in SECTIONS:
        out[section] = {name: entry.config.model_dump(mode="json") for name, entry in getattr(suite, section).items()}
    return out


def load(run_dir: str | Path, rebuild: bool = True, report: dict[str, Any] | None = None) -> RunResults:
    """The results of the run in ``run_dir``. ``rebuild``: regenerate its report first (``harness report``, with
    the installed plugins' declarations), so the numbers are the current report code's; else read the report the
    run directory holds. ``report``: options of the ``report:`` section merged over the run's own when rebuilding
    (say, the targets of a study whose runs were made before its suites spelled them out)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.resolved.json").exists():
        raise HarnessError(f"{run_dir} is not a run directory (no config.resolved.json); fix: pass the --out "
                           "directory of `harness run`")
    if rebuild:
        from ._engine.plugins import load_registry
        from ._engine.report import build_report
        from ._engine.report.config import ReportConfig

        config = None
        if report:
            recorded = json.loads((run_dir / "config.resolved.json").read_text())["suite"].get("report") or {}
            config = ReportConfig.model_validate({**recorded, **report})
        build_report(run_dir, config, plugins=load_registry().plugin_class)
    elif not (run_dir / "final_results.json").exists():
        raise HarnessError(f"{run_dir} has no report yet; fix: `harness report {run_dir}` (or load with rebuild)")
    final = json.loads((run_dir / "final_results.json").read_text())
    resolved = json.loads((run_dir / "config.resolved.json").read_text())
    return RunResults(run_dir, final, resolved)


@dataclass
class RunResults:
    """One run's results. ``final`` is ``final_results.json`` and ``resolved`` ``config.resolved.json``, as written;
    the methods below are the stable way to read them."""

    dir: Path
    final: dict[str, Any]
    resolved: dict[str, Any]
    _groups: dict[tuple[str, str, str], dict[str, Any]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._groups = {(g["section"], g["entry"], g["model"]): g for g in self.final.get("results", [])}

    # -- the run -------------------------------------------------------------------------------------------------
    @property
    def suite_name(self) -> str:
        return self.final["suite"]

    @property
    def mode(self) -> str:
        return self.final["mode"]

    @property
    def seeds(self) -> list[int]:
        return list(self.final["seeds"])

    @property
    def models(self) -> list[str]:
        return list(self.final["models"])

    @property
    def complete(self) -> bool:
        """Every stage finished (a partial run's numbers cover only what did)."""
        return bool(self.final.get("complete"))

    @property
    def missing(self) -> list[dict[str, Any]]:
        """The stages that did not finish: ``{"id", "status"}`` each."""
        return list(self.final.get("missing") or [])

    @property
    def report_config(self) -> dict[str, Any]:
        """The ``report:`` section the report ran with, every option filled in."""
        return dict(self.final.get("report_config") or {})

    @property
    def baseline(self) -> str | None:
        return self.report_config.get("baseline")

    @property
    def compare(self) -> list[str]:
        return list(self.report_config.get("compare") or [])

    # -- the suite as it ran ---------------------------------------------------------------------------------------
    @property
    def stages(self) -> list[dict[str, Any]]:
        """Every stage (id, section, entry, plugin, model, seed, status, duration_s, metrics), in graph order."""
        return list(self.final.get("stages") or [])

    def entries(self, section: str) -> list[str]:
        """The entries of ``section`` (models, train, metrics, attacks) in the suite's order."""
        if section == "models":
            return list((self.resolved["suite"].get("models") or {}))
        return list(dict.fromkeys(s["entry"] for s in self.resolved["stages"] if s["section"] == section))

    def plugin(self, section: str, entry: str) -> str | None:
        """The plugin an entry ran (``plugin:``, default the entry's name)."""
        for s in self.resolved["stages"]:
            if s["section"] == section and s["entry"] == entry:
                return s["plugin"]
        raw = (self.resolved["suite"].get(section) or {}).get(entry)
        return None if raw is None else raw.get("plugin", entry)

    def entry(self, section: str, name: str) -> dict[str, Any]:
        """An entry as the suite wrote it (reserved keys such as ``model``, ``from_train``, ``plugin`` included)."""
        return dict((self.resolved["suite"].get(section) or {}).get(name) or {})

    def config(self, section: str, name: str) -> dict[str, Any]:
        """An entry's resolved plugin config (every default filled in)."""
        return dict(self.resolved.get("configs", {}).get(f"{section}.{name}") or {})

    def trained_by(self, model: str) -> str | None:
        """The train entry whose checkpoint ``model`` is (None: a model loaded as it is)."""
        return self.entry("models", model).get("from_train")

    # -- numbers ---------------------------------------------------------------------------------------------------
    def metric(self, section: str, entry: str, model: str, metric: str) -> dict[str, Any] | None:
        """``metric`` of ``entry`` on ``model`` across seeds (mean, std, ci95, n, ...), None when not measured. For
        a train entry, ``model`` is the model it starts from."""
        group = self._groups.get((section, entry, model))
        return None if group is None else group["across_seeds"].get(metric)

    def per_seed(self, section: str, entry: str, model: str, metric: str) -> dict[str, float]:
        """``metric`` per finished seed (keys as the report writes them: the seed, or "unseeded")."""
        group = self._groups.get((section, entry, model))
        if group is None:
            return {}
        return {seed: v["metrics"][metric] for seed, v in group["per_seed"].items()
                if v.get("status") == "done" and v["metrics"].get(metric) is not None}

    def records(self, stage_id: str) -> list[dict[str, Any]]:
        """The per-example records of a finished stage (what its intervals are computed from)."""
        from ._engine.rundir import RunDir

        return RunDir(self.dir).records(stage_id)

    def stage_seconds(self) -> dict[str, float]:
        """Seconds the finished stages took, per section."""
        out: dict[str, float] = {}
        for s in self.stages:
            if s["status"] == "done" and s.get("duration_s") is not None:
                out[s["section"]] = out.get(s["section"], 0.0) + s["duration_s"]
        return out

    # -- the report's comparisons ------------------------------------------------------------------------------------
    def comparisons(self, kind: str | None = None, model: str | None = None, entry: str | None = None,
                    attack_metric: str | None = None) -> list[dict[str, Any]]:
        """The report's judged comparisons against the baseline (``kind``: ``gap`` for the cost metric,
        ``reduction`` for each attack), filtered by model and entry. ``attack_metric``: the reductions recomputed
        by the report's own code with another attack metric than the suite's ``report.attack_metric``."""
        items = (self.final.get("indicators") or []) if attack_metric is None else self._indicators_on(attack_metric)
        return [i for i in items if (kind is None or i.get("kind") == kind)
                and (model is None or i.get("model") == model) and (entry is None or i.get("entry") == entry)]

    def comparison(self, kind: str, model: str, entry: str | None = None,
                   attack_metric: str | None = None) -> dict[str, Any] | None:
        """The one comparison of ``kind`` for ``model`` (and ``entry``), or None."""
        found = self.comparisons(kind, model, entry, attack_metric)
        return found[0] if found else None

    def _indicators_on(self, attack_metric: str) -> list[dict[str, Any]]:
        from ._engine.plugins import load_registry
        from ._engine.report.aggregate import aggregate
        from ._engine.report.collect import load_run
        from ._engine.report.config import ReportConfig
        from ._engine.report.verdicts import indicators

        config = ReportConfig.model_validate({**self.report_config, "attack_metric": attack_metric})
        return indicators(aggregate(load_run(self.dir, config), load_registry().plugin_class))

    @property
    def attack_vs_control(self) -> list[dict[str, Any]]:
        """Every attack against its control on each model (attack minus control, paired interval)."""
        return list(self.final.get("attack_vs_control") or [])

    @property
    def versus_matched_controls(self) -> list[dict[str, Any]]:
        """Each model against its matched control models (``report.matched_controls``)."""
        return list(self.final.get("versus_matched_controls") or [])

    @property
    def attack_entries(self) -> list[str]:
        """The attack entries the report judges, in the suite's order: controls included, an entry that reports a
        matrix (a trigger found on one model evaluated on the others) not."""
        return list(dict.fromkeys(row["attack"] for row in (self.final.get("attacks") or {}).get("rows", [])))

    @property
    def controls(self) -> list[str]:
        """The attack entries that are controls (random edits at another attack's budget)."""
        return sorted({i["entry"] for i in self.final.get("indicators") or [] if i.get("control")})

    @property
    def transfer_matrix(self) -> dict[str, Any] | None:
        return self.final.get("transfer_matrix")

    # -- tables and files --------------------------------------------------------------------------------------------
    @property
    def table_names(self) -> list[str]:
        return [t["name"] for t in self.final.get("tables") or []]

    def table(self, name: str) -> dict[str, Any]:
        """A table of ``report.tables`` as data (columns, rows of cells)."""
        for t in self.final.get("tables") or []:
            if t["name"] == name:
                return t
        names = ", ".join(self.table_names) or "none"
        raise HarnessError(f"{self.dir}: the report has no table '{name}' (it has: {names}); fix: name one of "
                           "`report.tables` in the suite")

    def table_file(self, name: str, suffix: str = "md") -> Path:
        """The report's file of a table: ``NAME.md`` (Markdown) or ``NAME.tex`` (LaTeX)."""
        self.table(name)
        return self.dir / f"{name}.{suffix}"

    @property
    def plots(self) -> list[Path]:
        """The report's figures (PNG files)."""
        return sorted((self.dir / "plots").glob("*.png"))

    def invocations(self) -> list[dict[str, Any]]:
        """The timed invocations a run script logged (``invocations.jsonl``), if any."""
        from ._engine.rundir import read_records  # the one reader of JSONL logs (stops at a torn line)

        return read_records(self.dir / "invocations.jsonl")[0]
