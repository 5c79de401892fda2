"""Config field types in words: ``an integer >= 1``, ``one of 'float32', 'bfloat16'``, ``a list of strings``.

Used for one-line type errors ("flips: must be an integer >= 1 or a number > 0 and <= 1, got 'x'") instead of
pydantic's internals (``flips.constrained-int``), and by ``harness describe`` for its type column.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
_PLAIN = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path",
          type(None): "null", dict: "a mapping", list: "a list", Any: "any value"}


def _bounds(metadata: list[Any]) -> str:
    out = []
    for item in metadata:
        for attr, sign in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
        for attr, what in (("min_length", "at least {} item(s)"), ("max_length", "at most {} item(s)")):
            value = getattr(item, attr, None)
            if value is not None and not isinstance(item, type):
                out.append(what.format(value))
        inner = getattr(item, "metadata", None)  # a FieldInfo inside Annotated[...]
        if isinstance(inner, list) and inner is not metadata:
            nested = _bounds(inner)
            if nested:
                out.append(nested)
    return " and ".join(out)


def describe_type(annotation: Any, metadata: list[Any] | None = None) -> str:
    """``annotation`` (a field's type) with its constraints, in words."""
    metadata = list(metadata or [])
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe_type(args[0], [*metadata, *args[1:]])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(describe_type(a, metadata) for a in members))
        return text + (" (or null)" if len(members) < len(args) else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args) if len(args) > 1 else repr(args[0])
    if origin in (list, tuple, set, frozenset):
        element = describe_type(args[0]) if args else "values"
        base = f"a list of {_plural(element)}"
        bounds = _bounds(metadata)
        return f"{base} ({bounds})" if bounds else base
    if origin is dict:
        return f"a mapping of {_plural(describe_type(args[1]))}" if len(args) == 2 else "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a mapping ({annotation.__name__} options)"
    text = _PLAIN.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = _bounds(metadata)
    return f"{text} {bounds}" if bounds else text


def _plural(text: str) -> str:
    for one, many in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings"),
                      ("a path", "paths"), ("a mapping", "mappings")):
        if text.startswith(one):
            return many + text[len(one):]
    return text


def field_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], Any, list[Any]] | None:
    """(the key path of the field an error location points at, its annotation, its metadata), or None. Location
    parts that are not fields (pydantic's union member tags such as ``constrained-int``) end the walk."""
    model: Any = cls
    keys: list[str] = []
    annotation: Any = None
    metadata: list[Any] = []
    for i, part in enumerate(loc):
        if isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            info = model.model_fields[part]
            keys.append(str(part))
            annotation, metadata = info.annotation, list(info.metadata)
            model = model_in(annotation)
        elif annotation is not None and _mapping(annotation) is not None:
            key_type, value_type = _mapping(annotation)
            keys.append(str(part))
            if loc[i + 1:i + 2] == ("[key]",):  # the key itself is wrong: its type is what the error is about
                annotation, metadata = key_type, []
                break
            annotation, metadata = value_type, []
            model = model_in(annotation)
        elif isinstance(part, int) and annotation is not None:
            element = _element(annotation)
            if element is None:
                break
            keys.append(str(part))
            annotation, metadata = element, []
            model = model_in(annotation)
        else:
            break
    return (keys, annotation, metadata) if keys else None


def model_in(annotation: Any) -> Any:
    """The pydantic model an annotation holds (``DocumentSource | None`` -> DocumentSource), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def _element(annotation: Any) -> Any:
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) in (list, tuple) and typing.get_args(candidate):
            return typing.get_args(candidate)[0]
    return None


def _mapping(annotation: Any) -> tuple[Any, Any] | None:
    """(key type, value type) of a dict annotation (``dict[K, V] | None`` too), else None."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is dict and len(typing.get_args(candidate)) == 2:
            key, value = typing.get_args(candidate)
            return key, value
    return None
