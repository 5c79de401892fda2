"""The stage graph: one stage is one plugin call (train a model, evaluate a metric, run an attack).

Stage ids are paths (``metrics/perplexity/tiny``, ``attacks/hotflip/tiny/s42``): the stage's directory in the run.
A stage runs once per seed when its plugin is seeded or its model depends on the seed (a model trained per seed);
otherwise once. Each stage carries a cache key, the hash of everything its result depends on (plugin, version,
config and the content of its local data files, the model's identity including the training that made it, seed,
and the keys of its dependencies), so a changed config or data file recomputes exactly the stages it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .digests import content_key
from .errors import HarnessError
from .stage import Stage
from .store import stable_hash
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


def _stage_id(section: str, entry: str, model: str | None, seed: int, seeded: bool) -> str:
    parts = [section, entry] + ([model] if model else []) + ([f"s{seed}"] if seeded else [])
    return "/".join(parts)


def start_model(entry: Entry) -> str:
    """The model entry a train entry starts from (``load_suite`` has checked that it names one)."""
    if entry.model is None:
        raise HarnessError(f"{entry.section}.{entry.name}: no `model:` to train from; fix: add `model: <model entry>`")
    return entry.model


def build_graph(suite: Suite) -> Graph:
    stages: list[Stage] = []
    identity: dict[tuple[str, int], dict[str, Any]] = {}
    source: dict[tuple[str, int], str | None] = {}
    train_stage: dict[tuple[str, int], Stage] = {}
    seed_dependent: dict[str, bool] = {}

    def model_seeded(model: str) -> bool:
        if model not in seed_dependent:
            entry = suite.models[model]
            if entry.from_train is None:
                seed_dependent[model] = False
            else:
                t = suite.train[entry.from_train]
                seed_dependent[model] = t.plugin.cls.seeded or model_seeded(start_model(t))
        return seed_dependent[model]

    def model_key(model: str, seed: int) -> dict[str, Any]:
        if (model, seed) in identity:
            return identity[(model, seed)]
        entry = suite.models[model]
        ident: dict[str, Any] = {"plugin": entry.plugin.name, "version": entry.plugin.cls.version}
        if entry.from_train is None:
            ident["config"] = entry.plugin.cls(entry.config).cache_key()
            source[(model, seed)] = None
        else:
            t = train_for(entry.from_train, seed)
            ident["config"] = {k: v for k, v in entry.config.model_dump(mode="json").items() if k != "path"}
            ident["trained_by"] = t.key
            source[(model, seed)] = t.id
        identity[(model, seed)] = ident
        return ident

    def train_for(name: str, seed: int) -> Stage:
        entry = suite.train[name]
        start = start_model(entry)
        seeded = entry.plugin.cls.seeded or model_seeded(start)
        seed_key = seed if seeded else suite.seeds[0]
        if (name, seed_key) in train_stage:
            return train_stage[(name, seed_key)]
        base = model_key(start, seed_key)
        made_by = source.get((start, seed_key))  # the stage that trains the starting model, if any
        stage = Stage(_stage_id("train", name, None, seed_key, seeded), "train", name, entry.plugin.name,
                      start, seed_key, seeded, [made_by] if made_by else [])
        stage.produces = [m for m, e in suite.models.items() if e.from_train == name]
        stage.key = stable_hash({"plugin": entry.plugin.name, "version": entry.plugin.cls.version,
                                 "config": content_key(entry.config), "model": base,
                                 "seed": seed_key if seeded else None})
        train_stage[(name, seed_key)] = stage
        stages.append(stage)
        return stage

    for name in suite.train:
        for seed in suite.seeds:
            train_for(name, seed)

    evaluated: dict[str, list[Stage]] = {}
    ordered_entries: list[Entry] = [*suite.metrics.values(), *suite.attacks.values()]
    # Entries without `needs` first (grouped by model so each model is loaded once), then those that need others.
    for phase in (0, 1):
        for model in suite.models:
            for seed in suite.seeds:
                for entry in ordered_entries:
                    if bool(entry.needs) != bool(phase) or model not in entry.models:
                        continue
                    seeded = entry.plugin.cls.seeded or model_seeded(model)
                    if not seeded and seed != suite.seeds[0]:
                        continue
                    ident = model_key(model, seed)
                    deps = [d for d in [source[(model, seed)]] if d]
                    for need in entry.needs:
                        deps += [s.id for s in evaluated.get(need, []) if s.seed == seed or not s.seeded]
                    stage = Stage(_stage_id(entry.section, entry.name, model, seed, seeded), entry.section,
                                  entry.name, entry.plugin.name, model, seed, seeded, deps)
                    dep_keys = sorted(s.key for s in stages if s.id in deps)
                    stage.key = stable_hash({"plugin": entry.plugin.name, "version": entry.plugin.cls.version,
                                             "config": content_key(entry.config), "model": ident,
                                             "seed": seed if seeded else None, "deps": dep_keys})
                    evaluated.setdefault(entry.name, []).append(stage)
                    stages.append(stage)
    return Graph(suite, stages, identity, source)
