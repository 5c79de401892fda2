"""The stage graph: one stage is one plugin call (train a model, evaluate a metric, run an attack).

Stage ids are paths (``metrics/perplexity/tiny``, ``attacks/hotflip/tiny/s42``): the stage's directory in the run.
A stage runs once per seed when its plugin is seeded or its model depends on the seed (a model trained per seed);
otherwise once. Each stage carries a cache key, the hash of everything its result depends on (plugin, version,
config and the content of its local data files, the model's identity including the training that made it, seed,
and the keys of its dependencies), so a changed config or data file recomputes exactly the stages it changes.

Built in three steps, each its own function:

1. **sorting** (:func:`entry_levels`): metric and attack entries grouped by the depth of their ``needs`` (level 0
   needs nothing, level k needs something at level k-1), so every entry comes after everything it needs;
2. **expansion** (:func:`expand`): each entry becomes one stage per model (and seed), depending on the training that
   made its model and on every stage of every entry it needs (all models; the same seed, or the unseeded one);
3. **hashing** (:func:`hash_stages`): keys in dependency order, each from the keys of its dependencies, set once
   when the (frozen) stage is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..digests import content_key
from ..errors import HarnessError
from ..stage import Stage
from ..store import stable_hash
from .suite import Entry, Suite


@dataclass
class Graph:
    suite: Suite
    stages: list[Stage]
    #: (model entry, seed) -> identity dict of the weights, and the train stage that makes them (if any).
    model_identity: dict[tuple[str, int], dict[str, Any]]
    model_source: dict[tuple[str, int], str | None]

    def by_id(self) -> dict[str, Stage]:
        return {s.id: s for s in self.stages}


@dataclass
class PlannedStage:
    """A stage before hashing: everything but its key. ``payload`` is what the key hashes besides the dependencies'
    keys; ``identity`` is filled for models when the key of the training that made them is known."""

    id: str
    section: str
    entry: str
    plugin: str
    model: str
    seed: int
    seeded: bool
    deps: list[str]
    payload: dict[str, Any]
    produces: list[str] = field(default_factory=list)
    #: The config without its example count (``Plugin.reuse_config``), hashed in place of the config into the
    #: stage's reuse key; None: the stage's records do not survive a change of its count.
    reuse_config: dict[str, Any] | None = None
    #: Train stages hash their dependencies through the starting model's identity, other stages through "deps".
    deps_in_payload: bool = True


def reuse_config(entry: Entry) -> dict[str, Any] | None:
    """What a stage's reuse key holds of its entry: the plugin's config without the example count, plus the content
    digests of its local data files (records computed on other content are never carried over)."""
    reuse = entry.plugin.cls(entry.config).reuse_config()
    digests = content_key(entry.config).get("data_files_sha256")
    return {**reuse, "data_files_sha256": digests} if reuse is not None and digests else reuse


def _stage_id(section: str, entry: str, model: str | None, seed: int, seeded: bool) -> str:
    parts = [section, entry] + ([model] if model else []) + ([f"s{seed}"] if seeded else [])
    return "/".join(parts)


def start_model(entry: Entry) -> str:
    """The model entry a train entry starts from (``load_suite`` has checked that it names one)."""
    if entry.model is None:
        raise HarnessError(f"{entry.section}.{entry.name}: no `model:` to train from; fix: add `model: <model entry>`")
    return entry.model


# -- 1. sorting --------------------------------------------------------------------------------------------------
def entry_levels(suite: Suite) -> list[list[Entry]]:
    """The metric and attack entries by depth of ``needs``: level 0 needs nothing, an entry at level k needs at
    least one entry at level k-1 and none deeper. Within a level, the suite's listing order (metrics, then attacks).
    A cycle (``load_suite`` rejects them first) is a HarnessError naming the entries involved."""
    entries = [*suite.metrics.values(), *suite.attacks.values()]
    names = {e.name for e in entries}
    depth: dict[str, int] = {}
    remaining = entries
    while remaining:
        waiting = []
        for entry in remaining:
            needs = [n for n in entry.needs if n in names]
            if all(n in depth for n in needs):
                depth[entry.name] = 1 + max((depth[n] for n in needs), default=-1)
            else:
                waiting.append(entry)
        if len(waiting) == len(remaining):
            raise HarnessError(f"`needs` cycle among {', '.join(e.key for e in waiting)}; fix: remove one of "
                               "these `needs` (an entry cannot wait for itself)")
        remaining = waiting
    levels: list[list[Entry]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for entry in entries:
        levels[depth[entry.name]].append(entry)
    return levels


# -- 2. expansion ------------------------------------------------------------------------------------------------
class _Expansion:
    """Turns the suite's entries into planned stages, in dependency order (train stages first, upstream training
    before the training that starts from it; then the metric/attack levels, each grouped by model so that a run
    loads each model once per level)."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.stages: list[PlannedStage] = []
        self.source: dict[tuple[str, int], str | None] = {}
        self.train_stage: dict[tuple[str, int], PlannedStage] = {}
        self.seed_dependent: dict[str, bool] = {}

    def model_seeded(self, model: str) -> bool:
        if model not in self.seed_dependent:
            entry = self.suite.models[model]
            if entry.from_train is None:
                self.seed_dependent[model] = False
            else:
                t = self.suite.train[entry.from_train]
                self.seed_dependent[model] = t.plugin.cls.seeded or self.model_seeded(start_model(t))
        return self.seed_dependent[model]

    def model_stage(self, model: str, seed: int) -> str | None:
        """The train stage that makes ``model`` for ``seed`` (planning it first), or None for a loaded model."""
        if (model, seed) not in self.source:
            entry = self.suite.models[model]
            self.source[(model, seed)] = None if entry.from_train is None else self.train_for(entry.from_train, seed).id
        return self.source[(model, seed)]

    def train_for(self, name: str, seed: int) -> PlannedStage:
        entry = self.suite.train[name]
        start = start_model(entry)
        seeded = entry.plugin.cls.seeded or self.model_seeded(start)
        seed_key = seed if seeded else self.suite.seeds[0]
        if (name, seed_key) in self.train_stage:
            return self.train_stage[(name, seed_key)]
        made_by = self.model_stage(start, seed_key)  # the stage that trains the starting model, if any
        # ``needs``: train entries at the same seed, whose results this training reads (their keys enter its key)
        needed = [self.train_for(need, seed_key).id for need in entry.needs]
        stage = PlannedStage(_stage_id("train", name, None, seed_key, seeded), "train", name, entry.plugin.name,
                             start, seed_key, seeded, ([made_by] if made_by else []) + needed,
                             {"plugin": entry.plugin.name, "version": entry.plugin.cls.version,
                              "config": content_key(entry.config), "seed": seed_key if seeded else None},
                             produces=[m for m, e in self.suite.models.items() if e.from_train == name],
                             deps_in_payload=bool(needed))
        self.train_stage[(name, seed_key)] = stage
        self.stages.append(stage)
        return stage

    def expand(self) -> list[PlannedStage]:
        suite = self.suite
        for name in suite.train:
            for seed in suite.seeds:
                self.train_for(name, seed)
        planned: dict[str, list[PlannedStage]] = {}
        for level in entry_levels(suite):
            for model in suite.models:
                for seed in suite.seeds:
                    for entry in level:
                        if model not in entry.models:
                            continue
                        seeded = entry.plugin.cls.seeded or self.model_seeded(model)
                        if not seeded and seed != suite.seeds[0]:
                            continue
                        deps = [d for d in [self.model_stage(model, seed)] if d]
                        for need in entry.needs:  # every model's stages of the entry needed, all at lower levels
                            deps += [s.id for s in planned.get(need, []) if s.seed == seed or not s.seeded]
                        stage = PlannedStage(_stage_id(entry.section, entry.name, model, seed, seeded),
                                             entry.section, entry.name, entry.plugin.name, model, seed, seeded, deps,
                                             {"plugin": entry.plugin.name, "version": entry.plugin.cls.version,
                                              "config": content_key(entry.config),
                                              **({"control_of": entry.control_of} if entry.control_of else {}),
                                              "seed": seed if seeded else None},
                                             reuse_config=reuse_config(entry))
                        planned.setdefault(entry.name, []).append(stage)
                        self.stages.append(stage)
        return self.stages


def expand(suite: Suite) -> tuple[list[PlannedStage], dict[tuple[str, int], str | None]]:
    """Every stage of the suite with its dependencies, in dependency order, and (model, seed) -> the train stage
    that makes that model (None for a model loaded as it is)."""
    expansion = _Expansion(suite)
    stages = expansion.expand()
    for model in suite.models:  # models nothing evaluates still get their source (the runner can load them)
        for seed in suite.seeds:
            expansion.model_stage(model, seed)
    return stages, expansion.source


# -- 3. hashing --------------------------------------------------------------------------------------------------
def model_identity(suite: Suite, model: str, seed: int, source: dict[tuple[str, int], str | None],
                   keys: dict[str, str]) -> dict[str, Any]:
    """What identifies the weights of ``model`` for ``seed``: its plugin, version and config, and for a trained
    model the key of the training stage that made it (which covers everything upstream)."""
    entry = suite.models[model]
    ident: dict[str, Any] = {"plugin": entry.plugin.name, "version": entry.plugin.cls.version}
    train_id = source[(model, seed)]
    if train_id is None:
        ident["config"] = entry.plugin.cls(entry.config).cache_key()
    else:
        ident["config"] = {k: v for k, v in entry.config.model_dump(mode="json").items() if k != "path"}
        ident["trained_by"] = keys[train_id]
    return ident


def hash_stages(suite: Suite, planned: list[PlannedStage], source: dict[tuple[str, int], str | None]
                ) -> tuple[list[Stage], dict[tuple[str, int], dict[str, Any]]]:
    """The frozen stages with their cache keys (``planned`` in dependency order), and every model's identity."""
    keys: dict[str, str] = {}
    identity: dict[tuple[str, int], dict[str, Any]] = {}

    def ident(model: str, seed: int) -> dict[str, Any]:
        if (model, seed) not in identity:
            identity[(model, seed)] = model_identity(suite, model, seed, source, keys)
        return identity[(model, seed)]

    stages = []
    for p in planned:
        payload = {**p.payload, "model": ident(p.model, p.seed)}
        if p.deps_in_payload:
            missing = [d for d in p.deps if d not in keys]
            if missing:  # expansion orders every dependency first: a bug here, not a suite error
                raise HarnessError(f"stage {p.id} hashed before its dependencies {missing}")
            payload["deps"] = sorted(keys[d] for d in p.deps)
        key = stable_hash(payload)
        keys[p.id] = key
        reuse_key = stable_hash({**payload, "config": p.reuse_config}) if p.reuse_config is not None else ""
        stages.append(Stage(p.id, p.section, p.entry, p.plugin, p.model, p.seed, p.seeded, tuple(p.deps), key,
                            reuse_key, tuple(p.produces)))
    for model, seed in source:  # every model's identity, evaluated or not
        ident(model, seed)
    return stages, identity


def build_graph(suite: Suite) -> Graph:
    planned, source = expand(suite)
    stages, identity = hash_stages(suite, planned, source)
    return Graph(suite, stages, identity, source)
