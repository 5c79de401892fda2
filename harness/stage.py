"""One stage of a run: one plugin call on one model (and seed). Its own module: the stage context names it, and the
graph that builds stages needs the suite, which the context must not import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """Frozen: the graph sets a stage's dependencies and cache key once, when it builds the stage (a key that
    changed later would silently detach the stage from its cached result)."""

    id: str
    section: str  # train | metrics | attacks
    entry: str
    plugin: str
    model: str  # the model entry evaluated (for train: the starting model)
    seed: int
    seeded: bool
    deps: tuple[str, ...] = ()
    key: str = ""
    #: For train stages: the model entries whose weights this stage produces.
    produces: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Callers may pass lists; stored as tuples so that a built stage cannot change.
        object.__setattr__(self, "deps", tuple(self.deps))
        object.__setattr__(self, "produces", tuple(self.produces))

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "section": self.section, "entry": self.entry, "plugin": self.plugin,
                "model": self.model, "seed": self.seed if self.seeded else None, "deps": list(self.deps),
                "key": self.key}
