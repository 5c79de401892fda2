"""One stage of a run: one plugin call on one model (and seed). Its own module: the stage context names it, and the
graph that builds stages needs the suite, which the context must not import."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stage:
    id: str
    section: str  # train | metrics | attacks
    entry: str
    plugin: str
    model: str  # the model entry evaluated (for train: the starting model)
    seed: int
    seeded: bool
    deps: list[str] = field(default_factory=list)
    key: str = ""
    #: The cache key without the example count, for a plugin whose records survive a change of it (see
    #: ``Plugin.reuse_config``); "" when they do not.
    reuse_key: str = ""
    #: For train stages: the model entries whose weights this stage produces.
    produces: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "section": self.section, "entry": self.entry, "plugin": self.plugin,
                "model": self.model, "seed": self.seed if self.seeded else None, "deps": self.deps, "key": self.key}
