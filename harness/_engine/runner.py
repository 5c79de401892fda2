"""Runs a suite's stage graph: skips what is complete, resumes what was interrupted, stores every result.

A stage is complete when ``done.json`` holds its current cache key (see :mod:`harness._engine.rundir`, which owns the
directory's layout and the done check); ``result.json`` is written first, so a kill between the two only reruns the
stage. A stage directory holding a different key (a changed config) is cleared before the stage reruns; one holding
the same key but no valid ``done.json`` was interrupted (or damaged), and its plugin resumes from its records and
state files. A run holds the run directory's lock (a ``--stage`` run: that stage's) while it runs.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api import LoadedModel
from ..context import StageContext, StagePreempted, StopNow, seed_everything
from ..env import environment_record
from ..errors import HarnessError
from .graph import Graph, Stage, build_graph
from .plugins import Registry, load_registry
from ..files import read_regular
from .rundir import CARRIED, RECORDS, RunDir, read_json_object, read_records, wait_for_rank0
from .stage_select import select_stages
from ..store import atomic_write_bytes, atomic_write_json, atomic_write_text, to_json, write_failed
from .suite import MAX_SUITE_BYTES, Suite
from ..summary import run_stage_summary

log = logging.getLogger("harness")


@dataclass
class StageOutcome:
    stage: Stage
    status: str  # done | skipped | preempted (stopped before it finished, or before it started)
    result: dict[str, Any] | None


class Runner:
    def __init__(self, suite: Suite, run_dir: Path | None = None, registry: Registry | None = None,
                 show_progress: bool | None = None, only: list[str] | None = None, rank: int = 0) -> None:
        self.suite = suite
        #: This process's rank when a launcher (torchrun) starts several for one training stage: every rank runs the
        #: stage (the plugin synchronises them), but only rank 0 writes the run's and the stage's bookkeeping files,
        #: so two processes never clear or replace each other's files.
        self.rank = rank
        self.run_dir = Path(run_dir or suite.output_dir).resolve()
        self.dir = RunDir(self.run_dir)
        self.registry = registry or load_registry()
        self.graph: Graph = build_graph(suite)
        self.show_progress = show_progress
        #: The stages to run (None: all): ``only`` may give ids, prefixes or globs (:mod:`harness._engine.stage_select`).
        self.only = select_stages(only, [s.id for s in self.graph.stages], suite.path) if only else None
        self.stop_flag = [False]
        self._model: tuple[tuple[str, str | None], LoadedModel] | None = None

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def stage_dir(self, stage: Stage) -> Path:
        return self.dir.stage_dir(stage.id)

    def is_done(self, stage: Stage) -> bool:
        return self.dir.is_done(stage.id, stage.key)

    def write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.rank != 0:
            return
        resolved = {"suite_file": str(self.suite.path), "suite_name": self.suite.name, "mode": self.suite.mode,
                    "suite": self.suite.resolved,
                    "overrides": self.suite.overrides, "limit": self.suite.limit, "seeds": self.suite.seeds,
                    "configs": {e.key: e.config.model_dump(mode="json")
                                for s in ("models", "train", "metrics", "attacks")
                                for e in self.suite.section(s).values()},
                    "stages": [s.as_dict() for s in self.graph.stages]}
        atomic_write_json(self.run_dir / "config.resolved.json", resolved)
        atomic_write_bytes(self.run_dir / "suite.yaml", read_regular(self.suite.path, "suite file", MAX_SUITE_BYTES))
        packages = sorted({info.package for info in self.registry.all() if not info.package.startswith("(")})
        atomic_write_json(self.run_dir / "environment.json", environment_record(self.suite.seeds, packages))

    # -- models --------------------------------------------------------------------------------------------------
    def load_model(self, name: str, seed: int) -> LoadedModel:
        """Load (or reuse) model entry ``name`` as it is for ``seed``; keeps one model in memory at a time."""
        entry = self.suite.models[name]
        train_id = self.graph.model_source.get((name, seed))
        key = (name, train_id)  # a model trained per seed is a different model for each seed
        if self._model is not None and self._model[0] == key:
            return self._model[1]
        self._model = None
        gc.collect()
        config = entry.config
        if train_id is not None:
            stage = self.graph.by_id()[train_id]
            checkpoint = self.stage_dir(stage) / "checkpoint"
            if not self.is_done(stage) or not checkpoint.exists():
                raise HarnessError(f"model '{name}' comes from stage {train_id}, which has not finished; fix: run "
                                   "the suite so its training stage completes")
            config = type(config).model_validate({**config.model_dump(), "path": str(checkpoint)})
        plugin = entry.plugin.cls(config)
        ctx = self._context(self._pseudo_stage(name, seed))
        loaded = plugin.load(ctx)
        loaded.name = name
        loaded.model.eval()
        self._model = (key, loaded)
        return loaded

    def _pseudo_stage(self, model: str, seed: int) -> Stage:
        return Stage(f"models/{model}", "models", model, self.suite.models[model].plugin.name, model, seed, False)

    def _context(self, stage: Stage) -> StageContext:
        return StageContext(stage=stage, run_dir=self.run_dir, stage_dir=self.stage_dir(stage), seed=stage.seed,
                            mode=self.suite.mode, device=self.suite.device,
                            inputs={d: self._result(d) for d in stage.deps},
                            model_loader=lambda name: self.load_model(name, stage.seed),
                            stop_flag=self.stop_flag, show_progress=self.show_progress)

    def _result(self, stage_id: str) -> dict[str, Any]:
        return self.dir.result(stage_id) or {}

    # -- running -------------------------------------------------------------------------------------------------
    def _marker_key(self, stage: Stage) -> str | None:
        return self.dir.marker_key(stage.id)

    def prepare_stage_dir(self, stage: Stage, wait_s: float = 600.0) -> None:
        sdir = self.stage_dir(stage)
        marker = sdir / "stage.json"
        if self.rank != 0:  # rank 0 clears and marks the directory; the others wait until it has
            wait_for_rank0(lambda: self._marker_key(stage) == stage.key, marker, self.rank,
                           f"prepare stage {stage.id}", wait_s)
            return
        new_marker = {**stage.as_dict(), "reuse_key": stage.reuse_key,
                      "config": self.suite.section(stage.section)[stage.entry].config.model_dump(mode="json")}
        if (sdir.exists() and stage.reuse_key and self._marker_key(stage) not in (None, stage.key)
                and self.dir.reuse_key(stage.id) == stage.reuse_key):
            # Only the example count changed: keep the per-example records (the new sample adopts its own).
            kept = self._restart_keeping_records(stage, new_marker)
            log.info("[%s] the config changed only in its example count: %d records kept", stage.id, kept)
        elif sdir.exists() and (self._marker_key(stage) != stage.key or (sdir / "done.json").exists()
                                or self.dir.damaged_state(stage.id)):
            # Results of an older config of this stage, a finished stage whose files no longer check out (a done
            # marker beside a stage that is not done), or a resume state that cannot be read: recompute it all.
            self.dir.clear_stage(stage.id)
        sdir.mkdir(parents=True, exist_ok=True)
        # Records, resume state, training snapshots and the checkpoint are written, read back and deleted below here:
        # a symbolic link among them is removed (never followed) and what it stood for is computed again.
        self.dir.remove_links(sdir, f"the link is removed (not followed); stage {stage.id} computes it again")
        if not marker.exists():
            atomic_write_json(marker, new_marker)

    def _restart_keeping_records(self, stage: Stage, marker: dict[str, Any]) -> int:
        """Restart a stage whose config changed only in its example count, keeping its per-example records: they are
        merged into ``carried.jsonl`` (with any carried before; a later record of an example wins), everything else
        in the directory is deleted (result, done marker, resume states), and ``marker`` replaces the old
        ``stage.json`` last. Every step is atomic and the sequence can be repeated after a crash, so no record is
        lost and no stale result or state survives. Returns the number of records carried."""
        sdir = self.stage_dir(stage)
        merged: dict[Any, str] = {}
        for name in (CARRIED, RECORDS):
            for record in read_records(sdir / name)[0]:
                merged[record.get("id")] = json.dumps(record, sort_keys=True) + "\n"
        atomic_write_text(sdir / CARRIED, "".join(merged.values()))
        for path in sorted(sdir.iterdir()):
            if path.name in (CARRIED, "stage.json"):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        atomic_write_json(sdir / "stage.json", marker)
        return len(merged)

    def run_stage(self, stage: Stage) -> StageOutcome:
        if self.is_done(stage):
            return StageOutcome(stage, "skipped", self._result(stage.id))
        for dep in stage.deps:
            if not self.is_done(self.graph.by_id()[dep]):
                raise HarnessError(f"stage {stage.id} needs {dep}, which has not finished; fix: run it first "
                                   f"(`harness run` runs stages in order)")
        self.prepare_stage_dir(stage)
        entry = self.suite.section(stage.section)[stage.entry]
        plugin = entry.build()
        model = self.load_model(stage.model, stage.seed)
        ctx = self._context(stage)
        seed_everything(stage.seed)
        started = time.time()
        # The metrics that follow from the records are computed here, from the declarations (one source of truth).
        metrics = run_stage_summary(plugin, model, ctx)
        if plugin.changes_model:
            self._model = None  # training changed the weights in memory: reload before evaluating anything
        result = {"stage": stage.as_dict(), "plugin": entry.plugin.name, "package": entry.plugin.package,
                  "config": entry.config.model_dump(mode="json"), "model_info": model.info,
                  # the perplexity of a uniform guess: the report's default ceiling for a usable model
                  "output_vocab_size": model.output_vocab_size,
                  "metrics": metrics, "n_records": len(ctx.records),
                  "declared_metrics": [spec.as_dict() for spec in plugin.declared_metrics()], **plugin.result_fields(),
                  "duration_s": round(time.time() - started, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if self.rank == 0:
            sdir = self.stage_dir(stage)
            atomic_write_json(sdir / "result.json", result)
            atomic_write_json(sdir / "done.json", self.dir.done_marker(stage.id, stage.key, result["finished"]))
            (sdir / CARRIED).unlink(missing_ok=True)  # adopted into the records, or outside the sample
            self.registry.pm.hook.harness_stage_finished(run_dir=self.run_dir, stage=stage, result=result)
        return StageOutcome(stage, "done", result)

    def run(self) -> list[StageOutcome]:
        """Every stage (or those of ``only``) in order, holding the run directory's lock (rank 0 only: the other
        ranks of a launcher are its helpers). A stop request ends the run with the first unfinished stage's
        outcome ``preempted``, whichever stage it landed in."""
        if self.rank != 0:
            return self._run()
        only = self.only[0] if self.only and len(self.only) == 1 else None
        with self.dir.lock(only):
            if only is None:  # the run is held exclusively: no living writer owns a temporary file
                self.dir.remove_temporaries()
            return self._run()

    def _run(self) -> list[StageOutcome]:
        self.write_run_files()
        outcomes: list[StageOutcome] = []
        stages = [s for s in self.graph.stages if self.only is None or s.id in self.only]
        with _stop_signals(self.stop_flag):
            for stage in stages:
                if self.stop_flag[0] and not self.is_done(stage):  # asked to stop while the last stage ran
                    outcomes.append(StageOutcome(stage, "preempted", None))
                    break
                try:
                    outcomes.append(self.run_stage(stage))
                except HarnessError as exc:
                    self._name_suite_and_stage(exc, stage)
                    raise
                except (StagePreempted, StopNow):
                    outcomes.append(StageOutcome(stage, "preempted", None))
                    break
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a library's own write (torch.save, a cache)
                        raise write_failed(Path(exc.filename or self.stage_dir(stage)), exc) from None
                    raise
        self._model = None
        if self.rank == 0 and all(self.is_done(s) for s in self.graph.stages):
            self.registry.pm.hook.harness_run_finished(run_dir=self.run_dir, suite=self.suite,
                                                       stages=self.graph.stages)
        return outcomes

    def _name_suite_and_stage(self, exc: HarnessError, stage: Stage) -> None:
        """Prefix a stage's error with the suite file and the stage: a plugin's message names its key (`train.x.lr`)
        and the fix, but only the runner knows which file and stage the key came from. The exception keeps its type
        (callers may catch a subclass such as NonFiniteLoss)."""
        message = str(exc)
        suite_file = str(self.suite.path)
        where = f"stage {stage.id}: " if stage.id not in message else ""
        if not message.startswith(suite_file):
            where = f"{suite_file}: {where}"
        if where:
            exc.args = (where + message, *exc.args[1:])


@contextmanager
def _stop_signals(flag: list[bool]):
    """SIGUSR1 (SLURM's warning before a time limit or preemption), SIGTERM and SIGINT ask the running stage to save
    its state and stop; plugins poll ``ctx.should_stop``. A second SIGTERM or SIGINT stops at once."""

    def handler(signum: int, frame: Any) -> None:
        if flag[0] and signum != signal.SIGUSR1:
            raise StopNow()
        flag[0] = True

    previous = {}
    for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread
            pass
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


def summary_table(run_dir: Path) -> str:
    """A compact text table of final_results.json (the full report comes from the report plugin)."""
    data = read_json_object(run_dir / "final_results.json", {"stages": list})
    if data is None:
        return "(no readable final_results.json yet)"
    lines = []
    for row in data["stages"]:
        if not isinstance(row, dict):
            continue
        metrics = row.get("metrics") if isinstance(row.get("metrics"), dict) else {}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool))
        lines.append(f"{row.get('id', '?'):<48} {row.get('status', '?'):<8} {shown}")
    return "\n".join(lines)


__all__ = ["Runner", "StageOutcome", "summary_table", "to_json"]
