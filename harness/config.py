"""Typed plugin configuration.

Every plugin declares ``Config``, a subclass of :class:`PluginConfig` (a pydantic model that forbids unknown keys),
so that a suite's typo is rejected with the plugin's name instead of being silently ignored. Paths in a suite are
relative to the suite file; :data:`ExistingPath` resolves them and checks that they exist at validation time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from .errors import ConfigError, did_you_mean


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


def _type_name(expected: str) -> str:
    return expected.replace("_type", "").replace("_parsing", "")


def validation_error_line(exc: ValidationError, file: Path, prefix: str, plugin: str,
                          config_cls: type[BaseModel]) -> ConfigError:
    """The first pydantic error as a one-line ConfigError (the count of the others is appended)."""
    errors = exc.errors()
    err = errors[0]
    loc = ".".join(str(p) for p in err["loc"])
    key = f"{prefix}.{loc}" if loc else prefix
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    etype = err["type"]
    known = list(config_cls.model_fields)
    if etype == "extra_forbidden":
        bad = str(err["loc"][-1])
        if len(err["loc"]) == 1:
            return ConfigError(file, key, f"unknown key '{bad}' for plugin '{plugin}'{did_you_mean(bad, known)}{more}",
                               f"remove it or use one of: {', '.join(known) or '(no options)'}")
        return ConfigError(file, key, f"unknown key '{bad}'{more}", "remove it; see the plugin's Config")
    if etype == "missing":
        return ConfigError(file, key, f"required key missing for plugin '{plugin}'{more}", f"add `{loc}: ...`")
    if etype == "value_error" and "file not found" in err["msg"]:
        return ConfigError(file, key, err["msg"].replace("Value error, ", "") + more,
                           "check the path (relative paths are relative to the suite file)")
    if etype == "value_error":  # a config's own validator (cross-field checks): its message, with its fix if it has one
        problem, _, fix = err["msg"].removeprefix("Value error, ").partition("; fix: ")
        return ConfigError(file, key, f"{problem}{more}", fix or f"see the options of plugin '{plugin}'")
    got = err.get("input")
    return ConfigError(file, key, f"{err['msg']} (got {got!r}){more}",
                       f"give a valid {_type_name(etype)} value for plugin '{plugin}'")


Validated = TypeVar("Validated", bound=BaseModel)


def validated(cls: type[Validated], data: Any, file: Path, prefix: str, what: str,
              context: dict[str, Any] | None = None) -> Validated:
    """``cls`` validated from ``data``, or the first problem as one ConfigError line naming ``file`` and the key."""
    try:
        return cls.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error_line(exc, file, prefix, what, cls) from None
