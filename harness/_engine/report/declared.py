"""What each stage's plugin declared it reports (:class:`harness.MetricSpec`), as the report reads it.

A stage's ``result.json`` records its plugin's declarations; a result written before declarations existed gets
them from the plugin class (a :data:`PluginResolver` the caller passes: the registry, or the run's suite), built
with the stage's recorded config. Nothing here names a plugin or a metric: the report shows, aggregates and
intervals exactly what the plugins declare. (The report never imports the registry itself: the registry registers
the core's hooks, which write the report.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from ...api import MetricSpec, Plugin, describe
from .stage_data import StageData

__all__ = ["PluginResolver", "declared_specs", "describe", "missing_declared", "undeclared"]

#: (suite section, plugin name) -> the plugin class, or None when it is not installed.
PluginResolver = Callable[[str, str], "type[Plugin] | None"]


def _from_class(stage: StageData, plugins: PluginResolver) -> list[MetricSpec] | None:
    cls = plugins(stage.section, stage.plugin)
    if cls is None:
        return None  # the plugin is not installed here: its numbers are shown, undeclared
    config: Any = (stage.result or {}).get("config") or {}
    try:
        plugin = cls(cls.Config.model_validate(config))
    except (ValidationError, TypeError):
        # The recorded config no longer validates here (a moved file, a renamed option): the declarations of a
        # plugin depend on its options at most, so take them as recorded.
        plugin = cls(cls.Config.model_construct(**config))
    return plugin.declared_metrics()


def declared_specs(stage: StageData, plugins: PluginResolver | None = None) -> list[MetricSpec] | None:
    """The stage's declarations: recorded in its result, else from its plugin class; None when neither is known."""
    recorded = (stage.result or {}).get("declared_metrics")
    if isinstance(recorded, list):
        return [MetricSpec.from_dict(d) for d in recorded if isinstance(d, dict)]
    return _from_class(stage, plugins) if plugins is not None else None


def missing_declared(specs: Iterable[MetricSpec], stage: StageData) -> list[str]:
    """Declared keys the stage's result lacks (a histogram: no record has its field). Families declare how keys look
    (``{task}/{metric}`` or ``{task}/{metric},{filter}``): they are missing only when none of them matches a key, flat
    (``"weight_change/ffn": 0.1``) or nested (``"weight_change": {"ffn": 0.1}``, read as ``weight_change/ffn``)."""
    metrics = stage.metrics
    out = []
    families = [s for s in specs if s.is_family and s.kind != "series"]
    keys = {*metrics, *stage.scalars()}
    if families and not any(f.match(k) for f in families for k in keys):
        out.append(" or ".join(f.name for f in families))
    for spec in specs:
        if spec.kind == "series":
            continue  # an optional view of the records (a validation curve only when validation ran)
        if spec.kind == "histogram":
            if spec.field and not any(spec.field in r for r in stage.records):
                out.append(spec.field)
        elif spec.is_family:
            continue
        elif spec.name not in metrics:
            out.append(spec.name)
    return out


def undeclared(specs: list[MetricSpec], stage: StageData) -> list[str]:
    """Numeric keys of the stage's result that no declaration describes."""
    return [k for k in stage.scalars() if describe(specs, k) is None]
