"""Typed plugin configuration.

Every plugin declares ``Config``, a subclass of :class:`PluginConfig` (a pydantic model that forbids unknown keys),
so that a suite's typo is rejected with the plugin's name instead of being silently ignored. Paths in a suite are
relative to the suite file; :data:`ExistingPath` resolves them and checks that they exist at validation time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo

from .config_types import describe_type, field_at, model_in
from .errors import ConfigError, did_you_mean


class PluginConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    #: Fields that count the examples or documents an entry works on (``None``: all of them). ``harness run
    #: --limit N`` caps each at N, here and in nested configs (a :class:`~harness.DocumentSource`'s ``limit``, an
    #: attack task's ``n_examples``), for a quick trial of a suite.
    limit_fields: ClassVar[tuple[str, ...]] = ()
    #: Options added after results were computed, whose default is what the plugin did before they existed: at
    #: their default they stay out of the stage cache key (:func:`harness.digests.content_key`), so stages computed
    #: before the option existed are found again; set to anything else, they enter it.
    key_omits_defaults: ClassVar[tuple[str, ...]] = ()

    def limited(self, n: int) -> Self:
        """This config with every ``limit_fields`` value (its own and its nested configs') capped at ``n``."""
        updates: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in self.limit_fields and (value is None or (isinstance(value, (int, float)) and value > n)):
                updates[name] = n
            elif isinstance(value, PluginConfig):
                updates[name] = value.limited(n)
            elif isinstance(value, (list, tuple)) and any(isinstance(v, PluginConfig) for v in value):
                updates[name] = type(value)(v.limited(n) if isinstance(v, PluginConfig) else v for v in value)
        return self.model_copy(update=updates) if updates else self


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
                          config_cls: type[BaseModel], is_plugin: bool = False) -> ConfigError:
    """The first pydantic error as a one-line ConfigError (the count of problems at other keys is appended)."""
    errors = exc.errors()
    err = errors[0]
    loc = ".".join(str(p) for p in err["loc"])
    key = f"{prefix}.{loc}" if loc else prefix
    etype = err["type"]
    field = field_at(config_cls, tuple(err["loc"])) if etype not in ("extra_forbidden", "missing") else None
    if field is not None:  # name the field itself, not pydantic's union member tags (`flips.constrained-int`)
        key = ".".join([prefix, *field[0]])
    others = {tuple(e["loc"][:len(field[0])] if field else e["loc"]) for e in errors[1:]} - {
        tuple(err["loc"][:len(field[0])] if field else err["loc"])}
    more = f" (and {len(others)} more problem{'s' if len(others) > 1 else ''})" if others else ""
    known = list(config_cls.model_fields)
    if etype == "extra_forbidden":
        bad = str(err["loc"][-1])
        if len(err["loc"]) == 1:
            return ConfigError(file, key, f"unknown key '{bad}' for plugin '{plugin}'{did_you_mean(bad, known)}{more}",
                               f"remove it or use one of: {', '.join(known) or '(no options)'}")
        parent = field_at(config_cls, tuple(err["loc"][:-1]))
        nested = model_in(parent[1]) if parent is not None else None
        if nested is not None:
            options = list(nested.model_fields)
            return ConfigError(file, key, f"unknown key '{bad}' in {'.'.join(parent[0])} ({nested.__name__})"
                               f"{did_you_mean(bad, options)}{more}", f"remove it or use one of: {', '.join(options)}")
        return ConfigError(file, key, f"unknown key '{bad}'{more}", "remove it; see the plugin's Config")
    if etype == "missing":
        return ConfigError(file, key, f"required key missing for plugin '{plugin}'{more}", f"add `{loc}: ...`")
    if etype == "value_error" and "file not found" in err["msg"]:
        return ConfigError(file, key, err["msg"].replace("Value error, ", "") + more,
                           "check the path (relative paths are relative to the suite file)")
    if etype == "value_error":  # a config's own validator (cross-field checks): its message, with its fix if it has one
        problem, _, fix = err["msg"].removeprefix("Value error, ").partition("; fix: ")
        return ConfigError(file, key, f"{problem}{more}", fix or f"see the options of plugin '{plugin}'")
    got = _shown(err.get("input"))
    fix = f"see `harness describe {plugin}` for its options" if is_plugin else f"see the {plugin} keys in the docs"
    if field is not None and field[1] is not None:
        return ConfigError(file, key, f"must be {describe_type(field[1], field[2])}, got {got}{more}", fix)
    return ConfigError(file, key, f"{err['msg'].lower()}, got {got}{more}", fix)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


Validated = TypeVar("Validated", bound=BaseModel)


def validated(cls: type[Validated], data: Any, file: Path, prefix: str, what: str,
              context: dict[str, Any] | None = None, is_plugin: bool = False) -> Validated:
    """``cls`` validated from ``data``, or the first problem as one ConfigError line naming ``file`` and the key."""
    try:
        return cls.model_validate(data, context=context)
    except ValidationError as exc:
        raise validation_error_line(exc, file, prefix, what, cls, is_plugin) from None
