"""Plugin discovery: pluggy + the ``harness`` entry-point group, and a registry of plugin classes by kind and name."""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from .. import hookspecs
from ..api import KINDS, SECTIONS, Plugin
from ..errors import HarnessError, did_you_mean

ENTRY_POINT_GROUP = "harness"
_HOOK_BY_KIND = {"model": "harness_models", "metric": "harness_metrics", "attack": "harness_attacks",
                 "trainer": "harness_trainers"}


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    cls: type[Plugin[Any]]
    #: The distribution (package) that registered it, e.g. ``harness`` or ``harness-example-metric``.
    package: str
    module: str
    description: str


class Registry:
    """All plugin classes by kind and name. Build one with :func:`load_registry`."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._by_kind: dict[str, dict[str, PluginInfo]] = {k: {} for k in KINDS}
        #: name -> why it cannot be used here and how to fix that (from ``harness_unavailable_plugins``).
        self.unavailable: dict[str, str] = {}
        self._collect()
        for reasons in pm.hook.harness_unavailable_plugins():
            self.unavailable.update(reasons or {})

    def _package_of(self, plugin: Any) -> str:
        return getattr(self.pm, "harness_packages", {}).get(self.pm.get_name(plugin) or "", "(registered in code)")

    def _collect(self) -> None:
        for kind, hook_name in _HOOK_BY_KIND.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                classes = impl.function() or []
                package = self._package_of(impl.plugin)
                for cls in classes:
                    base = KINDS[kind]
                    if not (isinstance(cls, type) and issubclass(cls, base)):
                        raise HarnessError(
                            f"plugin module {impl.plugin_name}: {hook_name} returned {cls!r}, which is not a "
                            f"{base.__name__} subclass; fix the plugin's hook implementation")
                    other = self._by_kind[kind].get(cls.name)
                    if other is not None and other.cls is not cls:
                        raise HarnessError(
                            f"two {kind} plugins are named '{cls.name}': {other.module} ({other.package}) and "
                            f"{cls.__module__} ({package}); fix: uninstall one or rename it")
                    doc = (cls.__doc__ or "").strip().splitlines()
                    self._by_kind[kind][cls.name] = PluginInfo(
                        cls.name, kind, cls, package, cls.__module__, doc[0] if doc else "")

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind[kind])

    def all(self) -> list[PluginInfo]:
        return [info for kind in KINDS for _, info in sorted(self._by_kind[kind].items())]

    def plugin_class(self, section: str, name: str) -> type[Plugin] | None:
        """The class of plugin ``name`` for entries of suite ``section``, or None when it is not installed (how the
        report finds the declared metrics of results that do not record them)."""
        kind = SECTIONS.get(section)
        return self._by_kind[kind][name].cls if kind in self._by_kind and name in self._by_kind[kind] else None

    def get(self, kind: str, name: str) -> PluginInfo:
        try:
            return self._by_kind[kind][name]
        except KeyError:
            if name in self.unavailable:
                raise KeyError(f"{kind} plugin '{name}' is not installed: {self.unavailable[name]}") from None
            known = self.names(kind)
            elsewhere = [k for k, plugins in self._by_kind.items() if name in plugins and k != kind]
            hint = f" ('{name}' is a {elsewhere[0]} plugin)" if elsewhere else did_you_mean(name, known)
            raise KeyError(f"unknown {kind} plugin '{name}'{hint}; known {kind} plugins: "
                           f"{', '.join(known) or 'none'}") from None


def make_plugin_manager(extra_plugins: list[object] | None = None, entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("harness")
    pm.add_hookspecs(hookspecs)
    # The core uses its own hooks: its final-results writer is an ordinary hook implementation.
    from . import core_hooks

    pm.register(core_hooks, name="harness._engine.core_hooks")
    pm.harness_packages = {"harness._engine.core_hooks": "harness"}  # plugin name -> distribution, for `harness list`
    if entry_points:
        _load_entry_points(pm)
    for plugin in extra_plugins or []:
        pm.register(plugin)
    return pm


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    # pluggy's load_setuptools_entrypoints, with a one-line error naming the broken entry point, and one naming both
    # packages when two register the same entry-point name (pluggy would keep the first and skip the other silently:
    # a suite naming the plugin would then run another one than its author installed). Conflicts are found before
    # anything is imported, so the error is the same whichever package the path lists first.
    found: dict[str, tuple[str, md.EntryPoint]] = {}  # entry-point name -> (package, entry point)
    for dist in md.distributions():
        package = dist.metadata["name"]
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or pm.is_blocked(ep.name):
                continue
            if ep.name in found and found[ep.name][0] != package:  # the same package twice (editable) is no clash
                first, other = found[ep.name]
                raise HarnessError(
                    f"two packages register the harness entry point '{ep.name}': {first} ({other.value}) and "
                    f"{package} ({ep.value}); fix: rename the entry point in one package's pyproject.toml or "
                    "uninstall it")
            found.setdefault(ep.name, (package, ep))
    for name, (package, ep) in found.items():
        if pm.get_plugin(name):  # registered in code under this name before the entry points were read
            continue
        try:
            plugin: ModuleType | Any = ep.load()
        except Exception as exc:  # a broken third-party plugin must not hide behind a traceback
            raise HarnessError(
                f"entry point '{ep.name} = {ep.value}' of package {package} failed to import: "
                f"{type(exc).__name__}: {exc}; fix: reinstall that package or `pip uninstall` it") from exc
        pm.register(plugin, name=name)
        pm.harness_packages[name] = package


_REGISTRY: Registry | None = None


def load_registry(refresh: bool = False) -> Registry:
    """The registry of every installed plugin (cached per process)."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = Registry(make_plugin_manager())
    return _REGISTRY
