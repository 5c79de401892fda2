"""Suites: YAML files that combine models, trainers, metrics and attacks. Loading validates everything.

Shape (every section is a mapping from an entry name to its options; ``plugin:`` defaults to the entry name)::

    name: quick
    seeds: [42]
    models:
      base: {plugin: <a model plugin>}
      mono: {plugin: hf_causal_lm, from_train: monotonic}
    train:
      monotonic: {plugin: monotonic, model: base, steps: 50}
    metrics:
      perplexity: {data: {dataset: json, data_files: ../data/shakespeare/test.jsonl}}
    attacks: {}
    quick: {metrics: {perplexity: {max_documents: 10}}}   # merged over the suite with --mode quick
    full:  {seeds: [42, 1337]}

Reserved keys in an entry: ``plugin``, ``enabled``; in metrics/attacks also ``models`` (the subset of models to run
on, default all) and ``needs`` (entries whose stages must finish first, e.g. for transfer); in attacks also
``control_of`` (the entry is the random control of that attack entry: its plugin and options, run with random
candidates; it takes no options of its own); in train ``model`` (the starting model) and ``needs`` (train entries
whose stages at the same seed must finish first; their results reach the trainer as ``ctx.inputs``, e.g. to stop
at their perplexity); in models ``from_train`` (the model is that train entry's checkpoint). Everything else is the
plugin's own config and is validated by the plugin's ``Config``.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..api import SECTIONS, AttackPlugin, Plugin
from ..config import PluginConfig, validated
from ..errors import ConfigError, did_you_mean
from .overrides import apply_overrides
from ..files import NotRegularFile, escape, has_control, open_regular
from .plugins import PluginInfo, Registry, load_registry
from .report.config import ReportConfig

TOP_KEYS = {"name", "description", "seeds", "device", "output_dir", "report", "quick", "full", *SECTIONS}
MODES = ("quick", "full")
#: Seeds are 64-bit signed in torch's generators: larger ones overflow.
MAX_SEED = 2**63
RESERVED = {
    "models": {"plugin", "enabled", "from_train"},
    "train": {"plugin", "enabled", "model", "needs"},
    "metrics": {"plugin", "enabled", "models", "needs"},
    "attacks": {"plugin", "enabled", "models", "needs", "control_of"},
}
#: What a control entry (``control_of:``) may set besides naming its attack: it runs its attack's plugin and options.
CONTROL_KEYS = {"enabled", "models", "needs", "control_of"}


@dataclass
class Entry:
    section: str
    name: str
    plugin: PluginInfo
    config: PluginConfig
    raw: dict[str, Any]
    models: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    from_train: str | None = None
    model: str | None = None
    #: Attacks: the entry this one is the random control of (``control_of:``).
    control_of: str | None = None

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    def build(self) -> Plugin[Any]:
        """The entry's plugin, built with its validated config (and, for a control, the attack it controls)."""
        plugin = self.plugin.cls(self.config)
        if self.control_of is not None and isinstance(plugin, AttackPlugin):
            plugin.control_of = self.control_of
        return plugin


@dataclass
class Suite:
    path: Path
    name: str
    mode: str
    seeds: list[int]
    device: str
    output_dir: Path
    models: dict[str, Entry]
    train: dict[str, Entry]
    metrics: dict[str, Entry]
    attacks: dict[str, Entry]
    report: ReportConfig
    #: The suite after the mode's overrides were merged in, as plain data (saved beside every result).
    resolved: dict[str, Any]
    #: Command-line overrides (``key.path=value``) applied after the mode's, as given.
    overrides: list[str] = field(default_factory=list)
    #: ``--limit N``: every metric and attack entry capped at N examples / documents (None: as configured).
    limit: int | None = None

    def section(self, name: str) -> dict[str, Entry]:
        return getattr(self, name)


def deep_merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    return copy.deepcopy(override)


#: A suite larger than this is refused before it is parsed (real suites are a few kB; a runaway generated one
#: would otherwise take minutes to parse and more to validate).
MAX_SUITE_BYTES = 1 << 20
#: Entry, model and suite names become directory names in the run: a safe character set and a length limit.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = "1-100 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"


class DuplicateKey(yaml.constructor.ConstructorError):
    """A mapping that names a key twice (plain YAML keeps the last and silently drops the first)."""


class UniqueKeySafeLoader(yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader):
    """yaml's safe loader that refuses duplicate keys in a mapping: the C parser when PyYAML was built with libyaml
    (tens of times faster on a large suite), else the pure-Python one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class says so
                continue
            if duplicate:
                raise DuplicateKey(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def check_name(name: Any, path: Path, key: str, what: str) -> str:
    """A name that is safe as a directory name (see NAME_PATTERN), or one ConfigError line."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        key = key if len(key) <= 80 else key[:77] + "..."
        raise ConfigError(path, key, f"{what} name must be {NAME_RULE}, got {shown}", f"rename it, e.g. `my_{what}`")
    return name


def load_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(path, "", "is a directory, not a suite file", "give the suite's YAML file (e.g. "
                          f"{path / 'quick.yaml'})")
    if not path.exists():
        raise ConfigError(path, "", "suite file not found", "check the path")
    try:
        # Only a regular file is read (a FIFO would wait forever), and the limit counts the bytes read: a link to
        # /dev/zero has size 0 but never ends.
        raw = _read_suite_bytes(path)
    except NotRegularFile as exc:
        raise ConfigError(path, "", f"the suite file is {exc.kind}, not a regular file (it is not read)",
                          "give the suite's YAML file itself") from None
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=UniqueKeySafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if isinstance(exc, DuplicateKey):
            raise ConfigError(path, "", f"{problem} at {where}", "keep one of the two (merge their options)") from None
        raise ConfigError(path, "", f"invalid YAML at {where}: {problem}", "fix the YAML syntax there") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not a UTF-8 text file", "save the suite as UTF-8 YAML") from None
    except RecursionError:
        raise ConfigError(path, "", "nested too deeply to read", "flatten the YAML") from None
    if data is None:
        raise ConfigError(path, "", "the suite is empty", "add at least `models:` and `metrics:`")
    if not isinstance(data, dict):
        raise ConfigError(path, "", f"the suite must be a mapping, got {type(data).__name__}",
                          "write `key: value` pairs at the top level")
    return data


def _read_suite_bytes(path: Path) -> bytes:
    fd = open_regular(path, "suite file")
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_SUITE_BYTES + 1)
    if len(raw) > MAX_SUITE_BYTES:
        raise ConfigError(path, "", f"the file holds more than the {MAX_SUITE_BYTES:,}-byte limit for a suite",
                          "split it into smaller suites (a suite describes one study)")
    return raw


def resolve_mode(data: dict[str, Any], path: Path, mode: str) -> dict[str, Any]:
    if mode not in MODES:
        raise ConfigError(path, "mode", f"unknown mode '{mode}'", f"use one of: {', '.join(MODES)}")
    for m in MODES:
        if m in data and not isinstance(data[m], dict):
            raise ConfigError(path, m, f"overrides must be a mapping, got {type(data[m]).__name__}",
                              f"write `{m}: {{section: {{entry: {{key: value}}}}}}`")
    resolved = {k: v for k, v in data.items() if k not in MODES}
    bad = set(data.get(mode) or {}) - (TOP_KEYS - set(MODES))
    if bad:
        key = sorted(bad)[0]
        raise ConfigError(path, f"{mode}.{key}", f"unknown key '{key}' in the {mode} overrides"
                          f"{did_you_mean(key, TOP_KEYS - set(MODES))}", "override only top-level suite keys")
    return deep_merge(resolved, data.get(mode) or {})


def _check_name_list(value: Any, path: Path, key: str, known: dict[str, Any], what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(path, key, f"expected a list of {what} names, got {value!r}", "write `[name, ...]`")
    for v in value:
        if v not in known:
            raise ConfigError(path, key, f"unknown {what} '{v}'{did_you_mean(v, known)}",
                              f"use one of: {', '.join(known) or '(none defined)'}")
    return value


def _parse_entries(data: dict[str, Any], section: str, path: Path, registry: Registry) -> dict[str, Entry]:
    block = data.get(section) or {}
    if not isinstance(block, dict):
        raise ConfigError(path, section, f"must be a mapping from entry name to options, got {type(block).__name__}",
                          f"write `{section}: {{name: {{plugin: ..., ...}}}}`")
    kind = SECTIONS[section]
    entries: dict[str, Entry] = {}
    controls: dict[str, dict[str, Any]] = {}
    for name, options in block.items():
        check_name(name, path, f"{section}.{name}", SECTIONS[section] if section != "train" else "train entry")
        key = f"{section}.{name}"
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise ConfigError(path, key, f"options must be a mapping, got {type(options).__name__} {options!r}",
                              "write `name: {plugin: ..., key: value}`")
        enabled = options.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(path, f"{key}.enabled", f"expected true or false, got {enabled!r}", "write `enabled: false`")
        if not enabled:
            continue
        if section == "attacks" and "control_of" in options:
            controls[name] = options  # its plugin and options are its attack's: resolved once every entry is read
            continue
        plugin_name = options.get("plugin", name)
        if not isinstance(plugin_name, str):
            raise ConfigError(path, f"{key}.plugin", f"expected a plugin name, got {plugin_name!r}",
                              "see `harness list`")
        try:
            info = registry.get(kind, plugin_name)
        except KeyError as exc:
            raise ConfigError(path, f"{key}.plugin" if "plugin" in options else key, exc.args[0],
                              "install the plugin's package or fix the name (`harness list` shows what is installed)"
                              ) from None
        raw = {k: v for k, v in options.items() if k not in RESERVED[section]}
        entries[name] = Entry(section, name, info, PluginConfig(), raw)
        entry = entries[name]
        if section == "models":
            entry.from_train = options.get("from_train")
        if section == "train":
            entry.model = options.get("model")
        if section in ("metrics", "attacks"):
            entry.models = options.get("models")  # checked once models are known
        if section != "models":
            entry.needs = options.get("needs") or []
    for name, options in controls.items():
        target = block.get(options["control_of"]) if isinstance(options["control_of"], str) else None
        if isinstance(target, dict) and target.get("enabled", True) is False:
            continue  # the control of a disabled attack is disabled with it
        entries[name] = _control_entry(name, options, entries, block, path)
    return {name: entries[name] for name in block if name in entries}  # the suite's order, controls included


def _control_entry(name: str, options: dict[str, Any], entries: dict[str, Entry], block: dict[str, Any],
                   path: Path) -> Entry:
    """Attack entry ``name`` with ``control_of: <attack>``: that attack's plugin and options, run as its random
    control (the plugin's loop with random candidates: same positions, budget and examples)."""
    key = f"attacks.{name}"
    target = options["control_of"]
    if not isinstance(target, str):
        raise ConfigError(path, f"{key}.control_of", f"expected an attack entry name, got {target!r}",
                          "write `control_of: <attack entry>`")
    if target == name:
        raise ConfigError(path, f"{key}.control_of", "an entry cannot be its own control", "name another attack entry")
    extra = sorted(set(options) - CONTROL_KEYS)
    if extra:
        raise ConfigError(path, f"{key}.{extra[0]}", f"a control runs its attack's plugin and options ('{target}'), "
                          f"so it takes no `{extra[0]}`", f"remove it (set it on attacks.{target}), keeping only "
                          f"{', '.join(sorted(CONTROL_KEYS))}")
    if target not in entries:
        if isinstance(block.get(target), dict) and "control_of" in block[target]:
            raise ConfigError(path, f"{key}.control_of", f"'{target}' is itself a control",
                              f"name the attack '{target}' controls")
        raise ConfigError(path, f"{key}.control_of", f"control of no attack entry '{target}'"
                          f"{did_you_mean(target, [e for e in block if e != name])}",
                          f"name an enabled attack entry ({', '.join(entries) or 'none defined'})")
    attack = entries[target]
    if not getattr(attack.plugin.cls, "randomizable", False):
        raise ConfigError(path, f"{key}.control_of", f"attack plugin '{attack.plugin.name}' of '{target}' cannot run "
                          "as a random control (it has no candidates to randomise)",
                          "control an attack whose plugin can (hotflip, uat, gcg, the TextAttack bridge)")
    entry = Entry("attacks", name, attack.plugin, PluginConfig(), dict(attack.raw), control_of=target)
    entry.models = options.get("models")
    entry.needs = options.get("needs") or []
    return entry


def _validate_config(entry: Entry, path: Path, extra: dict[str, Any] | None = None) -> PluginConfig:
    return validated(entry.plugin.cls.Config, {**entry.raw, **(extra or {})}, path, entry.key, entry.plugin.name,
                     context={"base_dir": path.parent}, is_plugin=True)


def load_suite(path: str | Path, mode: str = "quick", registry: Registry | None = None,
               output_dir: str | Path | None = None, overrides: list[str] | None = None,
               limit: int | None = None) -> Suite:
    """Read, merge the mode's overrides and then the command line's (``key.path=value``), and validate a suite;
    ``limit`` caps the examples/documents of every metric and attack entry (a quick trial, written to its own run
    directory ``<output_dir>-limitN`` unless ``output_dir`` is given). Raises :class:`ConfigError` with one line."""
    path = Path(path).resolve()
    registry = registry or load_registry()
    data = load_yaml(path)
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(path, str(key), f"unknown top-level key '{key}'{did_you_mean(str(key), TOP_KEYS)}",
                              f"use only: {', '.join(sorted(TOP_KEYS))}")
    resolved = resolve_mode(data, path, mode)
    if overrides:
        resolved = apply_overrides(resolved, list(overrides), path)
        for key in resolved:
            if key not in TOP_KEYS or key in MODES:
                raise ConfigError(path, str(key), f"unknown top-level key '{key}' in the command-line overrides"
                                  f"{did_you_mean(str(key), TOP_KEYS - set(MODES))}",
                                  "override a suite key, e.g. `seeds=[1,2]` or `attacks.hotflip.flips=8`")
    if limit is not None and limit < 1:
        raise ConfigError(path, "--limit", f"must be an integer >= 1, got {limit}", "e.g. --limit 5")

    name = check_name(resolved.get("name", path.stem), path, "name", "suite")
    seeds = resolved.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < MAX_SEED for s in seeds)):
        shown = repr(seeds) if len(repr(seeds)) <= 80 else repr(seeds)[:77] + "..."
        raise ConfigError(path, "seeds", f"expected a non-empty list of non-negative integers below 2**63, got {shown}",
                          "write `seeds: [42, 1337]`")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(path, "seeds", f"duplicate seeds in {seeds}", "list each seed once")
    device = resolved.get("device", "auto")
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise ConfigError(path, "device", f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N")

    sections = {s: _parse_entries(resolved, s, path, registry) for s in SECTIONS}
    models, train = sections["models"], sections["train"]
    if not models:
        raise ConfigError(path, "models", "no models defined",
                          "add `models: {name: {plugin: <a model plugin>}}` (`harness list` shows them)")

    for entry in train.values():
        if entry.model is None:
            raise ConfigError(path, f"{entry.key}.model", "a train entry needs the model it starts from",
                              f"add `model: <one of {', '.join(models)}>`")
        _check_name_list(entry.model, path, f"{entry.key}.model", models, "model")
        entry.needs = _check_name_list(entry.needs, path, f"{entry.key}.needs", train, "train entry")
        entry.config = _validate_config(entry, path)
    for entry in models.values():
        extra = None
        if entry.from_train is not None:
            _check_name_list(entry.from_train, path, f"{entry.key}.from_train", train, "train entry")
            if "path" not in entry.plugin.cls.Config.model_fields:
                raise ConfigError(path, f"{entry.key}.plugin", f"plugin '{entry.plugin.name}' cannot load a trained "
                                  "checkpoint (its config has no `path`)",
                                  "use a model plugin whose config takes `path` (a Hugging Face checkpoint loader)")
            if "path" in entry.raw:
                raise ConfigError(path, f"{entry.key}.path", "a model `from_train` gets its path from training",
                                  "remove `path:`")
            extra = {"path": f"<checkpoint of train.{entry.from_train}>"}
        entry.config = _validate_config(entry, path, extra)
    _check_train_cycles(train, models, path)
    for section in ("metrics", "attacks"):
        everything = {**sections["metrics"], **sections["attacks"]}
        for entry in sections[section].values():
            entry.models = (_check_name_list(entry.models, path, f"{entry.key}.models", models, "model")
                            if entry.models is not None else list(models))
            entry.needs = _check_name_list(entry.needs, path, f"{entry.key}.needs", everything, "metric/attack entry")
            if entry.name in entry.needs:
                raise ConfigError(path, f"{entry.key}.needs", "an entry cannot need itself", "remove it from `needs`")
            entry.config = _validate_config(entry, path)
    _check_needs_cycles({**sections["metrics"], **sections["attacks"]}, path)

    report_raw = resolved.get("report") or {}
    if not isinstance(report_raw, dict):
        raise ConfigError(path, "report", "must be a mapping", "write `report: {baseline: <model>}`")
    report = validated(ReportConfig, report_raw, path, "report", "report")
    for key, names in (("report.baseline", [report.baseline] if report.baseline else []),
                       ("report.compare", report.compare)):
        _check_name_list(names, path, key, models, "model")
    for model, controls in report.matched_controls.items():
        _check_name_list([model], path, "report.matched_controls", models, "model")
        _check_name_list(controls, path, f"report.matched_controls.{model}", models, "model")
        if model in controls:
            raise ConfigError(path, f"report.matched_controls.{model}", "a model cannot be its own control",
                              "list other models (the damage-matched arms)")
    everything = {**sections["metrics"], **sections["attacks"]}
    for i, ensemble in enumerate(report.ensembles):
        key = f"report.ensembles[{i}]"
        if ensemble.name in everything:
            raise ConfigError(path, f"{key}.name", f"'{ensemble.name}' is already an entry of the suite",
                              "give the ensemble a name of its own")
        _check_name_list(ensemble.entries, path, f"{key}.entries", sections["attacks"], "attack entry")
    ensembles = {e.name for e in report.ensembles}
    for i, endpoint in enumerate(report.primary):
        key = f"report.primary[{i}]"
        _check_name_list([endpoint.model, endpoint.reference], path, key, models, "model")
        if endpoint.entry in ensembles:
            continue
        if endpoint.entry not in everything and not any(e.plugin.name == endpoint.entry for e in everything.values()):
            _check_name_list([endpoint.entry], path, f"{key}.entry", everything, "metric/attack entry")
    if report.compare and not report.baseline:
        raise ConfigError(path, "report.compare", "models to compare need a baseline", "add `report.baseline: <model>`")

    out_raw = output_dir if output_dir is not None else resolved.get("output_dir", f"runs/{name}")
    out_key = "--out" if output_dir is not None else "output_dir"
    if not isinstance(out_raw, (str, Path)) or not str(out_raw):
        raise ConfigError(path, out_key, f"expected a directory path, got {out_raw!r}", "write `output_dir: runs/NAME`")
    # The run directory's path goes into sbatch scripts, logs and messages: a newline or terminal escape in it could
    # forge a script line or a message, so it is refused (quotes, `$(...)` and spaces are quoted where it is used).
    for where, shown in ((out_key, str(out_raw)), ("suite file", str(path))):
        if has_control(shown):
            raise ConfigError(path, where, f"the path {escape(shown)!r} holds a newline or control character",
                              "use a path without control characters")
    out = Path(out_raw)
    if limit is not None:  # after validation: the capped values are within every field's bounds
        for entry in [*sections["metrics"].values(), *sections["attacks"].values()]:
            entry.config = entry.config.limited(limit)
    if limit is not None and output_dir is None:  # a trial never mixes its stages into the real run's directory
        out = out.with_name(f"{out.name}-limit{limit}")
    return Suite(path=path, name=name, mode=mode, seeds=seeds, device=device, output_dir=out.resolve(),
                 models=models, train=train, metrics=sections["metrics"], attacks=sections["attacks"],
                 report=report, resolved=resolved, overrides=list(overrides or []), limit=limit)


def _find_cycle(names: Iterable[str], upstream: Callable[[str], list[tuple[str, str]]]
                ) -> tuple[list[str], str, str] | None:
    """The first cycle among ``names`` by the edges ``upstream(name)`` gives (``(name waited for, the key that
    says so)``): the cycle's names (its first again at the end), the name whose key closes it and that key; None
    without one. Depth-first with its own stack: a long chain must not hit Python's recursion limit."""
    checked: set[str] = set()
    for start in names:
        if start in checked:
            continue
        trail, pending = [start], [upstream(start)]
        while trail:
            if not pending[-1]:
                checked.add(trail.pop())
                pending.pop()
                continue
            name, key = pending[-1].pop()
            if name in trail:
                return trail[trail.index(name):] + [name], trail[-1], key
            if name not in checked:
                trail.append(name)
                pending.append(upstream(name))
    return None


def _check_train_cycles(train: dict[str, Entry], models: dict[str, Entry], path: Path) -> None:
    """A train entry waits for the training of the model it starts from and for the train entries it ``needs``;
    a chain of those that leads back to itself would never run: one line naming the cycle."""
    def upstream(name: str) -> list[tuple[str, str]]:
        entry = train[name]
        base = models[entry.model].from_train if entry.model is not None else None
        return ([(base, "model")] if base is not None else []) + [(need, "needs") for need in entry.needs]

    found = _find_cycle(train, upstream)
    if found is not None:
        cycle, closer, key = found
        raise ConfigError(path, f"{train[closer].key}.{key}", f"training cycle: {' -> '.join(cycle)}",
                          "a train entry cannot start from its own output or need a train entry that waits for it")


def _check_needs_cycles(entries: dict[str, Entry], path: Path) -> None:
    """Entries whose ``needs`` lead back to themselves would never run: one line naming the cycle."""
    found = _find_cycle(entries, lambda name: [(need, "needs") for need in entries[name].needs])
    if found is not None:
        cycle, closer, _ = found
        if len(cycle) > 8:
            cycle = cycle[:4] + [f"... ({len(cycle) - 6} more)"] + cycle[-2:]
        raise ConfigError(path, f"{entries[closer].key}.needs", f"`needs` cycle: {' -> '.join(cycle)}",
                          "remove one of these `needs` (an entry cannot wait for itself)")
