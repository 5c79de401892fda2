"""Typed plugin configuration.

Every plugin declares ``Config``, a subclass of :class:`PluginConfig` (a pydantic model that forbids unknown keys),
so that a suite's typo is rejected with the plugin's name instead of being silently ignored. Paths in a suite are
relative to the suite file; :data:`ExistingPath` resolves them and checks that they exist at validation time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo


class PluginConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


def _base_dir(info: ValidationInfo) -> Path:
    ctx = info.context or {}
    return Path(ctx.get("base_dir", "."))


def _resolve_existing(value: Path, info: ValidationInfo) -> Path:
    path = value if value.is_absolute() else (_base_dir(info) / value)
    path = path.resolve()
    if not path.exists():
        raise ValueError(f"file not found: {path}")
    return path


def _resolve(value: Path, info: ValidationInfo) -> Path:
    return (value if value.is_absolute() else (_base_dir(info) / value)).resolve()


#: A path, relative to the suite file, that must exist when the suite is validated.
ExistingPath = Annotated[Path, AfterValidator(_resolve_existing)]
#: A path, relative to the suite file, that need not exist yet (an output, say).
ResolvedPath = Annotated[Path, AfterValidator(_resolve)]


def looks_like_local_path(value: str) -> bool:
    """A model/dataset reference that names a local path rather than a hub id (``org/name``)."""
    return value.startswith((".", "/", "~")) or Path(value).exists()


def config_dict(config: BaseModel) -> dict[str, Any]:
    """A JSON-ready dict of a config, for hashing and for the resolved config saved beside results."""
    return config.model_dump(mode="json")
