"""The pluggy hook specifications: the whole contract between the core and its plugins.

A plugin module (or object) implements any of these with ``@harness.hookimpl`` and is registered through the
``harness`` entry-point group, the built-in plugins included. Kind hooks return plugin classes (subclasses of the
bases in :mod:`harness.api`); lifecycle hooks let plugins (and the core itself) react to a run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("harness")
hookimpl = pluggy.HookimplMarker("harness")


@hookspec
def harness_models() -> list[type]:
    """Return :class:`harness.api.ModelPlugin` subclasses: things that load a causal LM and its tokenizer."""


@hookspec
def harness_metrics() -> list[type]:
    """Return :class:`harness.api.MetricPlugin` subclasses: things that measure a loaded model."""


@hookspec
def harness_attacks() -> list[type]:
    """Return :class:`harness.api.AttackPlugin` subclasses: adversarial attacks on a loaded model."""


@hookspec
def harness_trainers() -> list[type]:
    """Return :class:`harness.api.TrainerPlugin` subclasses: things that turn a model into a new checkpoint."""


@hookspec
def harness_unavailable_plugins() -> dict[str, str]:
    """Plugins a package provides but cannot offer here (an optional dependency is missing), by name: one line saying
    what is missing and how to install it. They are not listed; a suite that selects one fails with that line."""


@hookspec
def harness_stage_finished(run_dir: Path, stage: Any, result: dict[str, Any]) -> None:
    """Called after a stage's result is stored (not for stages skipped because they were already complete)."""


@hookspec
def harness_run_finished(run_dir: Path, suite: Any, stages: list[Any]) -> None:
    """Called once every stage of a run is complete; the core writes ``final_results.json`` here."""
